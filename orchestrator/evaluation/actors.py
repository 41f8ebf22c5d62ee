"""The evaluation actors of one model family, started together and reusable.

``hbat eval`` starts them for one model and stops them after; ``hbat compare``
keeps one set alive for the whole comparison and points it at each new
checkpoint (``load``): rollout replicas and the KL worker load the new
weights from storage, the reward model stays. All actors are created at once,
so their start-up overlaps.
"""

from __future__ import annotations

import ray

from hbat.orchestrator.evaluation.generation import spawn_rollout, torch_threads
from hbat.orchestrator.evaluation.settings import EvalConfig
from hbat.orchestrator.evaluation.suites.kl import KLWorker
from hbat.orchestrator.evaluation.suites.reward import RewardScorer


class EvalActors:
    def __init__(self, model: str, cfg: EvalConfig, *, reward: bool, kl: bool):
        self.model = model
        self.rollout = spawn_rollout(model, cfg)
        self.reward = RewardScorer(cfg.reward_model, cfg) if reward else None
        self.kl = None
        if kl:
            res = cfg.resources.kl
            self.kl = ray.remote(KLWorker).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus).remote(
                model, cfg.reference, dtype=cfg.dtype,
                torch_threads=torch_threads(cfg) if res.num_gpus == 0 else None)

    def load(self, model: str) -> None:
        """Point the rollout replicas and the KL worker at another checkpoint (same tokenizer)."""
        if model == self.model:
            return
        refs = [a.load_checkpoint.remote(model) for a in self.rollout]
        if self.kl is not None:
            refs.append(self.kl.load_policy.remote(model))
        ray.get(refs)
        self.model = model

    def services(self) -> dict:
        out = {}
        if self.reward is not None:
            out["reward"] = self.reward
        if self.kl is not None:
            out["kl"] = self.kl
        return out

    def close(self) -> None:
        for a in self.rollout:
            ray.kill(a)
        if self.reward is not None:
            self.reward.close()
        if self.kl is not None:
            ray.kill(self.kl)
