"""Optimizer, schedule and RNG plumbing shared by the trainable actors
(policy, critic, reward), so every role steps and checkpoints the same way."""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from hbat.orchestrator.config import OptimConfig


def optim_config(optim: OptimConfig | dict | None) -> OptimConfig:
    """The config's optimizer section as sent by the driver (a dict is validated into one)."""
    if isinstance(optim, OptimConfig):
        return optim
    return OptimConfig.model_validate(optim or {})


def build_optimizer(model: torch.nn.Module, s: OptimConfig, total_steps: int, start_step: int = 0):
    """AdamW over trainable parameters + a warm-up then constant/cosine/linear schedule.

    ``start_step``: where the learning-rate schedule starts (a role whose
    schedule spans several phases but whose optimizer state is rebuilt for
    each, like the critic's). The fused AdamW kernel (one pass over each tensor's weights, grads and
    moments) is used wherever it applies: on CPU it measured 10x faster than
    the per-tensor loop on the 135M model (0.07 s vs 0.67-0.88 s a step).
    FSDP2's DTensor shards keep the default implementation.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, betas=s.betas,
                            fused=_fused_ok(params) or None)
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if s.warmup_steps and step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        progress = min(1.0, (step - s.warmup_steps) / max(1, total - s.warmup_steps))
        if s.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if s.scheduler == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if start_step:  # a schedule that spans phases, resumed where the last phase left it
        sched.last_epoch = start_step
        for group, base in zip(opt.param_groups, sched.base_lrs):
            group["lr"] = base * factor(start_step)
        sched._last_lr = [g["lr"] for g in opt.param_groups]
    return opt, sched


def _fused_ok(params: list[torch.Tensor]) -> bool:
    """Plain (non-DTensor) floating tensors on one CPU/CUDA device: what fused AdamW takes."""
    from torch.distributed.tensor import DTensor

    devices = {p.device.type for p in params}
    return (not any(isinstance(p, DTensor) for p in params) and len(devices) == 1
            and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params))


def clip_and_step(model, opt, sched, grad_clip: float) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


def split_micro(batch: dict, n: int, paired: bool = False) -> list[dict]:
    """Split a dict of [B, ...] tensors (and lists) into ``n`` near-equal micro-batches.

    ``paired``: rows are [chosen B | rejected B] (``collate_pairwise``); each
    micro-batch keeps pairs together and the same layout.
    """
    size = next(len(v) for v in batch.values() if isinstance(v, (torch.Tensor, list)))
    units = size // 2 if paired else size
    n = max(1, min(n, units))
    if n == 1:
        return [batch]
    bounds = [round(i * units / n) for i in range(n + 1)]
    out = []
    for i in range(n):
        idx = list(range(bounds[i], bounds[i + 1]))
        if paired:
            idx = idx + [units + j for j in idx]
        part = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size:
                part[k] = v[idx]
            elif isinstance(v, list) and len(v) == size:
                part[k] = [v[j] for j in idx]
            else:
                part[k] = v
        if paired and "num_pairs" in part:
            part["num_pairs"] = len(idx) // 2
        out.append(part)
    return out


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def quiet_transformers() -> None:
    """Actors log through the driver; silence per-load reports and bars."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def setup_actor(device: str = "auto", torch_threads: int | None = None, seed: int | None = None) -> torch.device:
    """What every model-holding actor does first: quiet transformers, size its
    torch thread pool, seed its RNGs (when it samples or trains), pick its
    device and, on a CPU, let malloc keep the big blocks a step frees for
    the next step (``actors/host_memory.py``)."""
    from hbat.actors.host_memory import keep_freed_blocks
    from hbat.models import resolve_device

    quiet_transformers()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    if seed is not None:
        seed_everything(seed)
    resolved = resolve_device(device)
    if resolved.type == "cpu":
        keep_freed_blocks()
    return resolved


class RunFolderProbe:
    """Mixin for every role's actor: prove it sees the run folder.

    Checkpoint shards are written by each actor into the run folder and
    renamed into place by the driver, so on a cluster the folder must be on
    storage every node mounts at the same path. :meth:`probe` writes a file
    the driver then looks for (``orchestrator/run_folder.py``).
    """

    def probe(self, folder: str, name: str) -> dict:
        import os
        import socket
        from pathlib import Path

        where = {"host": socket.gethostname(), "pid": os.getpid()}
        try:
            import ray

            where["node_id"] = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - outside Ray
            pass
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(str(where))
        return where
