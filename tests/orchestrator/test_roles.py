"""Weight sync is real: after a training phase the rollout actor's greedy
answers change, and they are exactly what the policy's exported weights
generate (so PPO never samples from a stale policy)."""

from __future__ import annotations

import torch

from hbat.actors.rollout import RolloutWorker
from hbat.actors.sampling import SamplingSettings
from hbat.orchestrator.config import validate_config
from hbat.orchestrator.driver import Driver
from hbat.orchestrator.metrics import MetricsLogger

NEW_TOKENS = 8


def _local_greedy(model: str, version: int, weights: dict, prompts: list[dict]) -> torch.Tensor:
    """Greedy generation with the exported weights, outside Ray."""
    worker = RolloutWorker(model, backend="hf")
    worker.update_weights(version, weights)
    exp = worker.generate([p["prompt_ids"] for p in prompts],
                          SamplingSettings(temperature=0.0, max_new_tokens=NEW_TOKENS, n=1, seed=0))
    return exp.sequences


def test_rollout_follows_policy_after_each_phase(ray_local, make_tree):
    ray = ray_local
    # grpo: no critic actor needed; a large SFT learning rate so answers surely change
    cfg = validate_config(make_tree("hbat", "ppo", **{
        "ppo.advantage": "grpo", "ppo.max_new_tokens": NEW_TOKENS, "sft.optim.lr": 5e-2, "ppo.optim.lr": 5e-2,
    }))
    d = Driver(cfg)
    try:
        d.load_data()
        d.metrics = MetricsLogger(d.run_dir, tensorboard=False)
        d.start()
        d.start_scorers()
        d.roles.sync_rollout()
        prompts = [d.data.get("prompts")[i] for i in range(4)]

        def greedy() -> torch.Tensor:
            return d.roles.sample(prompts, seed=0, greedy=True).sequences

        def exported() -> tuple[int, dict]:
            return ray.get(d.roles.policy.first("export_weights"))

        v0, w0 = exported()
        before = greedy()
        assert torch.equal(before, _local_greedy(cfg.model.policy, v0, w0, prompts))

        seen = [before]
        for index in (0, 1):  # the SFT phase of round 1, then its PPO phase
            phase = d.plan[index]
            d.run_phase(index, phase)
            version, weights = exported()
            assert version > v0
            assert ray.get(d.roles.rollout.first("weight_version")) == version, f"rollout stale after {phase.name}"
            after = greedy()
            assert torch.equal(after, _local_greedy(cfg.model.policy, version, weights, prompts)), phase.name
            assert not torch.equal(after, seen[-1]), f"{phase.name} did not change the greedy rollouts"
            seen.append(after)
            v0 = version
    finally:
        d.metrics.close()
        d.shutdown()
