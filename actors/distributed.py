"""The ranks of a trainable role's worker group: one ``torch.distributed``
process group, the model sharded with FSDP2, and the collectives the
trainers need (sums of statistics, gathered tensors).

Why a group and not N independent replicas: data-parallel training is one
optimizer step over the whole batch. Each rank holds 1/N of every parameter,
gradient and AdamW state (FSDP2 ``fully_shard`` per decoder layer and at the
root); forward and backward gather one layer at a time and reduce-scatter
its gradients, so N ranks take the same step as one process on the whole
batch, with 1/N of the training state each.

Rendezvous is the group's own (rank 0's node address and a free port, found
by rank 0's actor and handed to every member), so no environment variables
leak between runs. The training group is the process's default group; a
later collective that includes ranks outside the group (weight sync to
rollout engines) opens a second group of its own without touching this one,
and :meth:`GroupMember.leave_group` / :meth:`GroupMember.join_group` let a
restarted member rejoin under a new rendezvous.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from hbat.actors.training import RunFolderProbe


def node_address() -> tuple[str, int]:
    """This node's IP address and a free TCP port on it (rank 0's rendezvous point)."""
    try:
        import ray

        host = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (tests, scripts): loopback
        host = "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return host, int(s.getsockname()[1])


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face model: the modules whose class
    the model names in ``_no_split_modules`` (what it must keep whole), or,
    failing that, the ``layers``/``h`` ModuleList of its backbone."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names]
    if found:
        return found
    for m in model.modules():
        for attr in ("layers", "h", "blocks"):
            child = getattr(m, attr, None)
            if isinstance(child, nn.ModuleList) and len(child):
                return list(child)
    return []


def shard_model(model: nn.Module, *, compute_dtype: torch.dtype | None, cpu_offload: bool = False,
                reshard_after_forward: bool = True, layers: list[nn.Module] | None = None) -> nn.Module:
    """FSDP2 over the default process group: each decoder layer (``layers``,
    default :func:`decoder_layers`), then the root.

    ``compute_dtype`` (bf16 for ``bf16-mixed``): parameters are gathered in
    that dtype for forward and backward while the sharded master weights, the
    gradient reduction and the optimizer state stay fp32. ``None`` computes in
    the weights' own dtype. FSDP averages gradients over the ranks; the
    trainers normalise each loss by the global number of loss units and scale
    it by the world size (:attr:`GroupMember.grad_scale`), so the average is
    the gradient of the whole batch's mean. (A divide factor of 1 would say
    the same, but needs ``PREMUL_SUM``, which gloo lacks.)
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if compute_dtype else \
        MixedPrecisionPolicy()
    # pinned host memory needs an accelerator; on a CPU-only group the shards are host memory anyway
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    kwargs = {"mp_policy": mp, "offload_policy": offload}
    for layer in decoder_layers(model) if layers is None else layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, reshard_after_forward=reshard_after_forward, **kwargs)
    return model


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this rank holds (a DTensor's local shard; a plain tensor itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole of ``t`` on every rank (a collective for a DTensor)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def like(t: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """``data`` (a local shard of ``t``'s layout) as a tensor laid out like ``t``:
    a DTensor with ``t``'s mesh and placements when ``t`` is one (what
    ``torch.distributed.checkpoint`` reshards on load), else ``data``."""
    if not hasattr(t, "device_mesh"):
        return data
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(data, t.device_mesh, t.placements, run_check=False, shape=t.shape, stride=t.stride())


class GroupMember(RunFolderProbe):
    """Rank bookkeeping for a worker-group actor (policy, critic).

    ``rank``/``world`` are 0/1 until :meth:`join_group`; a world of one never
    opens a process group unless sharding is asked for (``fsdp.enabled: true``).
    """

    rank: int = 0
    world: int = 1

    def node_address(self) -> tuple[str, int]:
        return node_address()

    def join_group(self, rank: int, world: int, host: str, port: int, timeout_s: float = 300) -> int:
        """Join the group's ``torch.distributed`` process group (gloo on CPU, NCCL on GPU)."""
        device = getattr(self, "device", torch.device("cpu"))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if dist.is_initialized():
            dist.destroy_process_group()
        dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        self.rank, self.world = rank, world
        return rank

    def leave_group(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        self.rank, self.world = 0, 1

    @property
    def distributed(self) -> bool:
        return dist.is_initialized()

    @property
    def grad_scale(self) -> float:
        """Factor on a rank's share-weighted loss so the group's averaged gradient is the global sum."""
        return float(self.world) if self.distributed else 1.0

    def all_sum(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """Elementwise sum over the group's ranks (float64 on CPU; identity when alone)."""
        t = torch.as_tensor(values, dtype=torch.float64).clone()
        if not self.distributed:
            return t
        dev = getattr(self, "device", torch.device("cpu"))
        t = t.to(dev) if dev.type == "cuda" else t
        dist.all_reduce(t)
        return t.cpu()

    def sum_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Sum share-weighted statistics over the ranks (every rank gets the same
        dict). Every rank must pass the same keys; they are reduced in sorted order."""
        if not self.distributed or not stats:
            return stats
        keys = sorted(stats)
        return {**stats, **dict(zip(keys, self.all_sum([stats[k] for k in keys]).tolist()))}
