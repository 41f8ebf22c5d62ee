"""Splitting a batch over the ranks (or replicas) of a role, so that N ranks
take the same optimizer step as one process on the whole batch.

Rows are split into contiguous near-equal slices (pairs stay together, and
a preference slice keeps the ``[chosen | rejected]`` layout). Each training
part carries the *global* number of loss units of its batch (tokens for SFT
and PPO, pairs or rows for preference losses): a rank weights its slice's
mean by its share of that total and the group sums gradients, which is the
whole batch's mean. Every rank is also told how many micro-batches to cut
its slice into -- the same number everywhere, since every forward and
backward of a sharded model is a collective -- from ``optim.grad_accum`` and
``optim.max_tokens_per_micro``.
"""

from __future__ import annotations

import torch

from hbat.actors.experience import Experience
from hbat.actors.policy import LossPart, loss_units
from hbat.actors.training import split_micro


def split_rows(data, n: int, paired: bool = False) -> list:
    """``data`` (an Experience or a dict batch) as ``n`` contiguous row slices (fewer if it has fewer rows)."""
    if n <= 1:
        return [data]
    if isinstance(data, Experience):
        rows = len(data)
        bounds = [round(i * rows / n) for i in range(n + 1)]
        return [data.select(list(range(bounds[i], bounds[i + 1]))) for i in range(n) if bounds[i + 1] > bounds[i]]
    return split_micro(data, n, paired=paired)


def join_rows(results: list):
    """Concatenate per-slice results (tensors of rows) in slice order."""
    if len(results) == 1:
        return results[0]
    return torch.cat(results, dim=0)


def _tokens(batch) -> int:
    """Padded tokens of a batch (what a micro-batch's activations scale with)."""
    if isinstance(batch, Experience):
        return int(batch.sequences.numel())
    return int(batch["input_ids"].numel())


def _rows(kind: str, batch) -> int:
    """Splittable units of a slice: pairs for pairwise batches, rows otherwise."""
    n = len(batch) if isinstance(batch, Experience) else int(batch["input_ids"].shape[0])
    return n // 2 if kind == "pairwise" else n


def micro_count(slices: list, kind: str, grad_accum: int, max_tokens: int | None) -> int:
    """Micro-batches per rank: ``grad_accum``, or more when a slice exceeds the
    token budget; never more than the smallest slice has rows (pairs)."""
    k = grad_accum
    if max_tokens:
        k = max(k, max(-(-_tokens(s) // max_tokens) for s in slices))
    return max(1, min(k, min(_rows(kind, s) for s in slices)))


def split_parts(parts: list[LossPart], world: int, grad_accum: int = 1,
                max_tokens: int | None = None) -> list[list[LossPart]]:
    """Each rank's loss parts: its slice of every part, with the part's global
    loss units and the group's micro-batch count."""
    per_rank: list[list[LossPart]] = [[] for _ in range(world)]
    for part in parts:
        total = loss_units(part.kind, part.batch)
        slices = split_rows(part.batch, world, paired=part.kind == "pairwise")
        if len(slices) < world:
            raise ValueError(f"a {part.kind} batch of {_rows(part.kind, part.batch)} rows cannot be split over "
                             f"{world} ranks: every rank needs at least one")
        k = micro_count(slices, part.kind, grad_accum, max_tokens)
        for r, s in enumerate(slices):
            per_rank[r].append(LossPart(part.kind, s, part.weight, dict(part.options), total_units=total,
                                        micro_batches=k))
    return per_rank
