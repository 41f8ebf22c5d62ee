"""The reward-model stage: Bradley-Terry training on ``data.preference``.

A run-to-completion stage before PPO (or before a run whose probes score
answers): one trainable :class:`RewardWorker` learns from the preference
pairs and saves a Hugging Face folder, which the scoring replicas (and the
critic, by default) then load. ``hbat train``, ``hbat train-rm`` and ``hbat
compare`` (one shared reward model for every method) all use this one stage.
"""

from __future__ import annotations

from pathlib import Path

import ray
import torch
from tqdm.auto import tqdm

from hbat.orchestrator.config import Config, ConfigError
from hbat.orchestrator.data import collate_pairwise
from hbat.orchestrator.worker_group import WorkerGroup


def train_reward_model(cfg: Config, pairs, pad_id: int, placement, metrics, out: Path) -> str:
    """Train on ``pairs`` (a PairwiseDataset) in ``placement``; save to ``out`` once.

    An existing ``out/config.json`` is reused (a resumed run, or a comparison
    that shares one reward model).
    """
    from hbat.actors.reward import RewardWorker

    rm = cfg.reward_model
    if (out / "config.json").exists():
        return str(out)
    group = WorkerGroup("reward", placement.spawn(
        "reward", RewardWorker, cfg.model.policy, trainable=True, precision=cfg.model.precision, seed=cfg.run.seed,
        torch_threads=cfg.resources.torch_threads, gradient_checkpointing=cfg.model.gradient_checkpointing,
        shard=cfg.sharded("reward"), fsdp=cfg.resources.fsdp).actors)
    if cfg.sharded("reward"):
        group.rendezvous()  # the stage trains data-parallel over the reward role's replicas
    n_batches = -(-len(pairs) // rm.batch_size)
    total = min(rm.max_steps or n_batches * rm.epochs, n_batches * rm.epochs)
    group.run("begin_training", rm.optim, total)
    step = 0
    with tqdm(total=total, desc="reward model", disable=not cfg.logging.progress) as pbar:
        for epoch in range(rm.epochs):
            order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.run.seed + epoch))
            for i in range(0, len(order), rm.batch_size):
                if step >= total:
                    break
                batch = collate_pairwise([pairs[j] for j in order[i:i + rm.batch_size].tolist()], pad_id)
                stats = group.train_rows("train_step", batch, batch["input_ids"].shape[0] // 2, paired=True).get()
                metrics.log(step, stats, phase="reward_model")
                pbar.update(1)
                pbar.set_postfix(loss=f"{stats['rm/loss']:.3f}", acc=f"{stats['rm/accuracy']:.2f}")
                step += 1
    group.run("end_training")
    group.run("save_pretrained", str(out))
    for a in group.actors:
        ray.kill(a)
    return str(out)


def standalone_reward_model(cfg: Config, out: Path | None = None, tensorboard: bool | None = None) -> str:
    """The stage on its own (``hbat train-rm``, ``hbat compare``'s shared RM):
    reads ``data.preference``, starts Ray and one placement bundle, trains, cleans up."""
    from hbat.orchestrator.metrics import MetricsLogger
    from hbat.orchestrator.placement import Placement
    from hbat.orchestrator.ray_runtime import ensure_ray
    from hbat.orchestrator.run_data import RunData

    data = RunData.load(cfg)
    pairs = data.get("preference")
    if pairs is None:
        raise ConfigError("the reward-model stage needs data.preference")
    run_dir = cfg.run_dir()
    metrics = MetricsLogger(run_dir, cfg.logging.tensorboard if tensorboard is None else tensorboard)
    ensure_ray(cfg.resources.address, cfg.resources.num_cpus)
    placement = Placement(cfg.resources, ["reward"])
    try:
        return train_reward_model(cfg, pairs, data.pad_id, placement, metrics, out or run_dir / "reward_model")
    finally:
        metrics.close()
        placement.shutdown()
