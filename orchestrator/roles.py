"""The run's actors by role, and the calls every algorithm shares on them.

The driver and the step runners talk to roles through this one object:
``sample`` fans a batch of prompts out over the rollout replicas (one
contiguous slice each) and joins their records; ``sync_rollout`` pushes the
policy's weights to the replicas when they hold an older version. Each role
is built in one place (:meth:`Roles.spawn`), from the typed config; a
sharded trainable role's replicas form their process group there
(:class:`~hbat.orchestrator.worker_group.WorkerGroup`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import ray

from hbat.orchestrator.checkpoint import wait_all
from hbat.actors.experience import Experience
from hbat.actors.sampling import SamplingSettings
from hbat.models.precision import precision
from hbat.orchestrator.config import Config, ConfigError
from hbat.orchestrator.placement import Placement
from hbat.orchestrator.worker_group import WorkerGroup


class Roles:
    def __init__(self, cfg: Config, placement: Placement, pad_id: int):
        self.cfg, self.placement, self.pad_id = cfg, placement, pad_id
        self.policy: WorkerGroup | None = None
        self.reference: WorkerGroup | None = None
        self.reward: WorkerGroup | None = None
        self.critic: WorkerGroup | None = None
        self.rollout: WorkerGroup | None = None
        self._rollout_version: int | None = None  # the policy version the rollout replicas hold

    # -- construction ---------------------------------------------------------
    def spawn(self, role: str, reward_model: str | None = None) -> WorkerGroup:
        """Start ``role``'s replicas in the placement group (``reward_model``: the
        trained or given reward checkpoint, for the reward and critic roles)."""
        from hbat.actors.critic import CriticWorker
        from hbat.actors.policy import PolicyWorker
        from hbat.actors.reference import ReferenceWorker
        from hbat.actors.reward import RewardWorker
        from hbat.actors.rollout import RolloutWorker

        c, m = self.cfg, self.cfg.model
        threads, frozen = c.resources.torch_threads, precision(m.precision).frozen_dtype_name
        if role == "policy":
            group = self.placement.spawn("policy", PolicyWorker, m.policy, precision=m.precision, lora=m.lora,
                                         gradient_checkpointing=m.gradient_checkpointing, packing=m.packing,
                                         disable_dropout=m.disable_dropout, seed=c.run.seed, torch_threads=threads,
                                         shard=c.sharded("policy"), fsdp=c.resources.fsdp,
                                         offload_anchors=c.ewc.offload_anchors)
        elif role == "reference":
            group = self.placement.spawn("reference", ReferenceWorker, m.reference or m.policy, dtype=frozen,
                                         torch_threads=threads, packing=m.packing)
        elif role == "rollout":
            group = self.placement.spawn("rollout", RolloutWorker, m.policy, backend=c.rollout.backend,
                                         dtype=frozen, vllm_kwargs=c.rollout.vllm, torch_threads=threads)
        elif role == "reward":
            rm = c.reward_model
            group = self.placement.spawn("reward", RewardWorker, reward_model, dtype=frozen, rules=rm.rule_rewards,
                                         rule_weight=rm.rule_weight, model_weight=rm.model_weight,
                                         torch_threads=threads)
        elif role == "critic":
            group = self.placement.spawn("critic", CriticWorker, m.critic or reward_model or m.policy,
                                         precision=m.precision, seed=c.run.seed, disable_dropout=m.disable_dropout,
                                         torch_threads=threads, gradient_checkpointing=m.gradient_checkpointing,
                                         shard=c.sharded("critic"), fsdp=c.resources.fsdp)
        else:
            raise ValueError(f"unknown role '{role}'")
        group = WorkerGroup(group.name, group.actors)
        if role in ("policy", "critic") and c.sharded(role):
            group.rendezvous()
        setattr(self, role, group)
        return group

    def check_shared_folder(self, run_dir: Path) -> dict[str, dict]:
        """Fail fast unless every actor sees the run folder the driver sees.

        Each actor writes a probe file into ``<run>/.probe``; a file the driver
        cannot find means that actor's node has another disk at that path, and
        its checkpoint shards would silently be missing (multi-node runs need
        the run folder, and model paths, on shared storage). Returns where each
        actor runs (host, Ray node id, pid), by ``<role>-<replica>``.
        """
        folder = run_dir / ".probe"
        shutil.rmtree(folder, ignore_errors=True)
        names, refs = [], []
        for role in ("policy", "reference", "reward", "critic", "rollout"):
            group = getattr(self, role)
            for i, actor in enumerate(group.actors if group is not None else []):
                names.append(f"{role}-{i}")
                refs.append(actor.probe.remote(str(folder), names[-1]))
        where = dict(zip(names, wait_all(refs)))
        missing = [n for n in names if not (folder / n).is_file()]
        shutil.rmtree(folder, ignore_errors=True)
        if missing:
            hosts = sorted({where[n].get("host", "?") for n in missing})
            raise ConfigError(
                f"run.output_dir: {run_dir} is not on storage every node sees: the driver cannot see the probe "
                f"files of {', '.join(missing)} (on {', '.join(hosts)}). Put run.output_dir (and the model paths, "
                "HF_HOME) on a filesystem mounted at the same path on every node (deploy/README.md)")
        return where

    # -- shared calls ---------------------------------------------------------
    def sample(self, examples: list[dict], seed: int, greedy: bool = False, n: int | None = None) -> Experience:
        """Responses of the rollout replicas to ``examples`` (prompt records), sampled
        with the PPO section's decoding settings (``greedy``: temperature 0, one each)."""
        p = self.cfg.ppo
        sampling = SamplingSettings(temperature=0.0 if greedy else p.temperature, top_p=p.top_p, top_k=p.top_k,
                                    max_new_tokens=p.max_new_tokens, n=n or (1 if greedy else p.samples_per_prompt),
                                    seed=seed)
        refs = self.rollout.scatter("generate_records", examples, sampling)
        return Experience.concat(ray.get(refs), self.pad_id)

    def sync_rollout(self) -> None:
        """Push the policy's current weights to every rollout replica (by version).

        A no-op when the replicas already hold that version (e.g. the probe
        right after a phase-end sync). The exported state dict goes from the
        policy actor to the replicas as one object-store reference: the driver
        never pulls the weights into its own process.
        """
        if self.rollout is None:
            return
        version = ray.get(self.policy.first("weights_version"))
        if version == self._rollout_version:
            return
        export = self.policy.all("export_weights")  # every rank joins the gathers; rank 0's holds the weights
        wait_all(self.rollout.call("load_exported", export.refs[0]) + export.refs)
        self._rollout_version = version

    def refresh_reference(self) -> int:
        """The reference replicas load the policy's current weights; returns that version."""
        export = self.policy.all("export_weights")
        return wait_all(self.reference.call("load_exported", export.refs[0]) + export.refs)[0]
