"""Rows packed end to end instead of padded: the forward runs real tokens only.

A padded batch runs every row at the longest row's length: an SFT batch of
answers from 12 to 90 tokens, or a PPO batch whose prompts are left-padded and
whose responses stop early, spends a large share of its matmuls on pad tokens.
Here each row's real tokens are laid end to end into "bins" (first-fit
decreasing, a bin holds at most ``capacity`` tokens), every sequence starting
again at position 0. transformers reads the restarting ``position_ids`` of a
mask-free forward as packed sequences: with flash-attention it runs varlen
kernels; with SDPA or eager attention it builds a block-diagonal causal mask, so
no token attends across a sequence boundary.

The capacity is the padded batch's length by default, so a bin's attention
(``capacity**2``) never costs more than one padded row's, while the linear
layers -- most of a small model's FLOPs -- see only real tokens, and only
the scored tokens are projected through the vocabulary. With a
flash-attention varlen kernel everything goes into one row: the kernel skips
cross-sequence blocks, so the row length costs nothing extra.

Positions restart at 0 where the padded forward counted from the first
column; rotary embeddings depend only on the distance between two positions,
so the logits are the same function of the weights (the tests compare
log-probs and gradients with the padded forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hbat.models.scoring import kept_logits, unwrap_peft

#: attention implementations that honour packed ``position_ids`` with no attention mask
PACKABLE_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


@dataclass
class PackedRows:
    """A padded batch ``[B, T]`` laid out as ``bins`` rows of real tokens.

    ``input_ids``/``position_ids``: ``[bins, capacity]``; ``src``: for each
    padded cell ``(b, t)`` its flat index into the packed ``[bins * capacity]``
    layout, ``-1`` for a pad cell.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    src: torch.Tensor

    @property
    def bins(self) -> int:
        return self.input_ids.shape[0]


def contiguous_rows(attention_mask: torch.Tensor) -> bool:
    """Every row's real tokens form one run (left or right padding, no holes):
    the only layout whose positions packing can restart without changing distances."""
    m = attention_mask.bool()
    cols = torch.arange(m.shape[1], device=m.device)
    first = torch.where(m, cols, m.shape[1]).amin(1)
    last = torch.where(m, cols, -1).amax(1)
    return bool(((last - first + 1).clamp(min=0) == m.sum(1)).all())


def _first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for k, r in enumerate(room):
            if lengths[i] <= r:
                bins[k].append(i)
                room[k] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int | None = None,
              pad_token_id: int = 0) -> PackedRows:
    """Lay the real tokens of each row end to end into bins of ``capacity``
    tokens (default: the padded length ``T``). Rows must be contiguous
    (:func:`contiguous_rows`). A bin's unused tail is filler whose positions
    restart at 0 again, so it is its own sequence and no real token sees it."""
    B, T = input_ids.shape
    lengths = attention_mask.bool().sum(1).tolist()
    capacity = max(capacity or T, max(lengths, default=1), 1)
    layout = _first_fit_decreasing(lengths, capacity)
    ids = torch.full((len(layout), capacity), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    pos = torch.zeros((len(layout), capacity), dtype=torch.long, device=input_ids.device)
    src = torch.full((B, T), -1, dtype=torch.long, device=input_ids.device)
    cols = torch.arange(T, device=input_ids.device)
    for k, rows in enumerate(layout):
        at = 0
        for b in rows:
            n = lengths[b]
            real = cols[attention_mask[b].bool()]
            ids[k, at:at + n] = input_ids[b, real]
            pos[k, at:at + n] = torch.arange(n, device=input_ids.device)
            src[b, real] = k * capacity + at + torch.arange(n, device=input_ids.device)
            at += n
        if at < capacity:
            pos[k, at:] = torch.arange(capacity - at, device=input_ids.device)
    return PackedRows(ids, pos, src)


def attention_implementation(model) -> str | None:
    config = getattr(unwrap_peft(model), "config", None)
    return getattr(config, "_attn_implementation", None)


def packing_plan(model, attention_mask: torch.Tensor, mode: str) -> int | None:
    """The bin capacity to pack this batch with, or ``None`` to run it padded.

    ``mode``: ``off``; ``on`` packs whenever the model can; ``auto`` packs when
    the model can and the batch has padding. Each bin costs no more attention
    than a padded row, and where first-fit saves no row the packed step still
    measured 1.23x faster than the padded one on CPU with SDPA
    (``bench/results/packing_no_long_rows.md``; 2.24x where it saves rows,
    ``bench/results/packing.md``)."""
    if mode == "off":
        return None
    impl = attention_implementation(model)
    if impl not in PACKABLE_ATTENTION or not contiguous_rows(attention_mask):
        return None
    B, T = attention_mask.shape
    real = int(attention_mask.bool().sum())
    if mode == "auto" and real == B * T:
        return None
    return max(real, 1) if impl in VARLEN_ATTENTION else T


def packed_scored_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_cols: torch.Tensor,
                         capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits [N, V], rows [N], cols [N])`` of the ``N`` scored cells of
    ``loss_cols`` (``[B, T-1]``), from a packed forward that projects only
    those positions through the vocabulary; the logits of ``(rows[n],
    cols[n])`` predict token ``input_ids[rows[n], cols[n] + 1]``.

    The model's own forward runs (so FSDP's and peft's hooks see a normal
    call), keeping the logits of the scored packed slots only
    (:func:`~hbat.models.scoring.kept_logits`)."""
    pad = getattr(getattr(unwrap_peft(model), "config", None), "pad_token_id", None) or 0
    packed = pack_rows(input_ids, attention_mask, capacity, pad_token_id=pad)
    scored = loss_cols.bool() & (packed.src[:, :-1] >= 0)
    rows, cols = scored.nonzero(as_tuple=True)
    flat = packed.src[rows, cols]
    keep = torch.zeros(packed.input_ids.numel(), dtype=torch.bool, device=flat.device)
    keep[flat] = True
    kept = kept_logits(model, keep.view_as(packed.input_ids), input_ids=packed.input_ids,
                       position_ids=packed.position_ids, attention_mask=None, use_cache=False)  # row-major
    order = torch.zeros_like(keep, dtype=torch.long)
    order[keep] = torch.arange(len(kept), device=flat.device)
    return kept[order[flat]], rows, cols
