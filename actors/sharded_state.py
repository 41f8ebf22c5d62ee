"""A trainer's state in a run checkpoint: one folder written by every rank.

``torch.distributed.checkpoint`` (DCP) writes each rank's shards of the
weights, the AdamW state and any extra tensors laid out like the weights (EWC
anchors, the phase-start snapshot) into one folder with a global index, so a
checkpoint written by N ranks loads on M ranks -- or into one unsharded
process -- and no rank ever holds the whole model to save it. The small
rest (LR schedule, step counters, per-tensor EWC weights) is a ``meta.pt``
written by rank 0, and each rank's RNG state a ``rng-<rank>.pt``.

The folder is not atomic by itself: the driver writes it inside a
checkpoint's temporary folder and renames that folder only once every rank
and its own state are written (``orchestrator/checkpoint.py``).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from hbat.models.atomic import atomic_torch_save

META = "meta.pt"


@contextmanager
def _quiet_single_process():
    """One unsharded process saves and loads DCP folders too; DCP warns each time
    that it is "assuming the intent is to save in a single process" -- it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled, unavailable or uninitialized.*")
        yield


def _dcp_state(model, opt, tensors: dict[str, dict[str, torch.Tensor]]) -> dict:
    """What DCP writes or fills: the model's and (unless None) the optimizer's
    state dicts -- ``get_optimizer_state_dict`` also creates AdamW's lazily made
    state, so a load has tensors to fill -- and the non-empty tensor groups."""
    state: dict = {"model": get_model_state_dict(model)}
    if opt is not None:
        state["optim"] = get_optimizer_state_dict(model, opt)
    state.update({f"t.{k}": v for k, v in tensors.items() if v})
    return state


def save_sharded(path: str | Path, model, opt, tensors: dict[str, dict[str, torch.Tensor]], meta: dict,
                 rank: int, rng: dict) -> str:
    """Write ``model`` (and ``opt`` unless None) and ``tensors`` (groups of
    tensors laid out like the weights: DTensors when sharded) with DCP, plus
    ``meta`` (rank 0) and this rank's ``rng``. Every rank calls it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with _quiet_single_process():
        dcp.save(_dcp_state(model, opt, tensors), checkpoint_id=str(path))
    if rank == 0:
        atomic_torch_save({**meta, "has_optim": opt is not None, "tensor_groups": sorted(k for k, v in tensors.items() if v)},
                          path / META)
    atomic_torch_save(rng, path / f"rng-{rank}.pt")
    return str(path)


def read_meta(path: str | Path) -> dict:
    return torch.load(Path(path) / META, map_location="cpu", weights_only=False)


def load_sharded(path: str | Path, model, opt, templates: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict]:
    """Load weights (and optimizer state into ``opt`` unless None) from a folder
    :func:`save_sharded` wrote, resharding to this group's layout. ``templates``:
    for each saved tensor group, tensors laid out like the weights to load it
    into (e.g. ``torch.empty_like(param)``). Returns the loaded groups."""
    state = _dcp_state(model, opt, templates)
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
    if opt is not None:
        set_optimizer_state_dict(model, opt, state["optim"])
    return {k: state[f"t.{k}"] for k, v in templates.items() if v}


def load_rng(path: str | Path, rank: int) -> dict | None:
    """This rank's RNG state; a rank the writing group did not have takes rank 0's."""
    for r in (rank, 0):
        f = Path(path) / f"rng-{r}.pt"
        if f.is_file():
            return torch.load(f, map_location="cpu", weights_only=False)
    return None
