"""What every trainable role (policy, critic) does the same way as a rank of
its worker group: shard its model once the group exists, build and step its
optimizer, save and load its training state with DCP, export gathered weights.

A trainer that is not sharded (one replica, ``resources.fsdp.enabled:
auto``) is the same code with a world of one: no process group, plain
tensors, and the same checkpoint folder format, so a checkpoint of a
sharded group resumes on a single process and the other way round.
"""

from __future__ import annotations

import torch

from hbat.actors.distributed import GroupMember, decoder_layers, full, like, local, shard_model
from hbat.actors.sharded_state import load_rng, load_sharded, read_meta, save_sharded
from hbat.actors.training import build_optimizer, rng_state, set_rng_state
from hbat.orchestrator.config import FSDPConfig


class ShardedTrainer(GroupMember):
    """Mixin: ``self.model``, ``self.precision``, ``self.device`` set by the role's ``__init__``."""

    fsdp: FSDPConfig | None = None  # set when the role is sharded
    fsdp_root = None  # the module FSDP shards at the root (default: the model)
    _is_sharded = False

    def _init_sharding(self, shard: bool, fsdp: FSDPConfig | dict | None) -> None:
        self.fsdp = (fsdp if isinstance(fsdp, FSDPConfig) else FSDPConfig.model_validate(fsdp or {})) if shard else None

    def join_group(self, rank: int, world: int, host: str, port: int, timeout_s: float = 300) -> int:
        """Join the group, then shard the model over it (FSDP2)."""
        out = super().join_group(rank, world, host, port, timeout_s)
        if self.fsdp is not None and not self._is_sharded:
            # bf16-mixed: layers gathered in bf16 (fp32 shards, reductions and AdamW state)
            compute = torch.bfloat16 if self.precision.name == "bf16-mixed" else None
            shard_model(self.fsdp_root or self.model, compute_dtype=compute, cpu_offload=self.fsdp.cpu_offload,
                        reshard_after_forward=self.fsdp.reshard_after_forward, layers=decoder_layers(self.model))
            self._is_sharded = True
        return out

    @property
    def sharded(self) -> bool:
        return self._is_sharded

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def local_snapshot(self) -> dict[str, torch.Tensor]:
        """Detached host copies of this rank's part of every trainable tensor."""
        return {n: local(p).detach().to("cpu", copy=True) for n, p in self.trainable().items()}

    def clip_and_step(self, opt, sched, grad_clip: float) -> float:
        """Clip by the global gradient norm (all ranks' shards), step, clear gradients."""
        params = list(self.trainable().values())
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return float(full(norm))

    # -- training state ---------------------------------------------------------
    def save_training_state(self, path: str, opt, sched, tensors: dict[str, dict[str, torch.Tensor]],
                            meta: dict) -> str:
        """DCP folder: weights, optimizer (None: not kept), ``tensors`` (local shards, by group)."""
        params = self.trainable()
        laid_out = {g: {n: like(params[n], t.to(local(params[n]).device)) for n, t in group.items()}
                    for g, group in tensors.items()}
        meta = {**meta, "sched": sched.state_dict() if sched is not None else None,
                "tensor_names": {g: list(group) for g, group in tensors.items()}, "world": self.world}
        return save_sharded(path, self.model, opt, laid_out, meta, self.rank, rng_state())

    def load_training_state(self, path: str, optim, total_steps: int):
        """Load a :meth:`save_training_state` folder written by any number of ranks.

        Returns ``(meta, opt, sched, tensors)`` with ``tensors`` as local shards on the host.
        """
        meta = read_meta(path)
        opt = sched = None
        if meta["has_optim"]:
            opt, sched = build_optimizer(self.model, optim, total_steps)
        params = self.trainable()
        names = meta.get("tensor_names", {})
        templates = {g: {n: torch.empty_like(params[n]) for n in names.get(g, [])} for g in meta["tensor_groups"]}
        loaded = load_sharded(path, self.model, opt, templates)
        if sched is not None and meta.get("sched") is not None:
            sched.load_state_dict(meta["sched"])
        rng = load_rng(path, self.rank)
        if rng is not None:
            set_rng_state(rng)
        tensors = {g: {n: local(t).detach().to("cpu", copy=True) for n, t in group.items()} for g, group in loaded.items()}
        return meta, opt, sched, tensors
