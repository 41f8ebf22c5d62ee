"""Batching tokenised examples into padded tensors.

All tensors are ``torch.long``. ``loss_mask[b, t] == 1`` marks ``input_ids[b, t]``
as a response token, aligned with ``input_ids`` (not shifted): with causal-LM
logits, the log-prob of token ``t`` comes from ``logits[:, t - 1]``, so use
``loss_mask[:, 1:]`` with ``logits[:, :-1]`` / ``input_ids[:, 1:]``.

* :func:`collate_sft` / :func:`collate_pointwise`: RIGHT-padded (training).
* :func:`collate_pairwise`: one batch of ``2B`` rows — rows ``0..B-1`` are the
  chosen sequences, rows ``B..2B-1`` the rejected ones, in the same example
  order, all padded to one length — so a single forward pass scores both
  (``logps[:B]`` vs ``logps[B:]``). ``num_pairs`` (= B) is included.
* :func:`collate_prompts`: LEFT-padded ``input_ids`` / ``attention_mask`` for
  ``generate`` (new tokens append on the right of every row), plus the
  ``prompt_text`` and ``meta`` lists and ``prompt_lengths``.

``pad_to_multiple_of`` rounds the padded length up (tensor-core friendly).
Use ``functools.partial(collate_sft, pad_id=...)`` as a torch DataLoader
``collate_fn``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

__all__ = [
    "batches",
    "collate_pairwise",
    "collate_pointwise",
    "collate_prompts",
    "collate_sft",
    "pad_sequences",
]


def _padded_len(lengths: Sequence[int], multiple: int | None) -> int:
    n = max(lengths) if lengths else 0
    if multiple and multiple > 1:
        n = -(-n // multiple) * multiple
    return n


def pad_sequences(
    seqs: Sequence[Sequence[int]],
    pad_value: int,
    *,
    side: str = "right",
    length: int | None = None,
) -> torch.Tensor:
    """Stack int sequences into a ``[B, T]`` long tensor padded on ``side``."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    width = length if length is not None else _padded_len([len(s) for s in seqs], None)
    out = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    for i, seq in enumerate(seqs):
        if not len(seq):
            continue
        row = torch.as_tensor(list(seq), dtype=torch.long)
        if side == "right":
            out[i, : len(seq)] = row
        else:
            out[i, width - len(seq) :] = row
    return out


def _lm_batch(
    ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad_id: int, multiple: int | None
):
    if not ids:
        raise ValueError("cannot collate an empty batch")
    width = _padded_len([len(s) for s in ids], multiple)
    return {
        "input_ids": pad_sequences(ids, pad_id, length=width),
        "attention_mask": pad_sequences([[1] * len(s) for s in ids], 0, length=width),
        "loss_mask": pad_sequences(masks, 0, length=width),
    }


def collate_sft(
    examples: Sequence[dict[str, Any]], pad_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``loss_mask``: right-padded ``[B, T]``."""
    return _lm_batch(
        [e["input_ids"] for e in examples], [e["loss_mask"] for e in examples], pad_id, pad_to_multiple_of
    )


def collate_pointwise(
    examples: Sequence[dict[str, Any]], pad_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """As :func:`collate_sft` plus ``labels``: float32 ``[B]``."""
    batch = collate_sft(examples, pad_id, pad_to_multiple_of=pad_to_multiple_of)
    batch["labels"] = torch.tensor([float(e["label"]) for e in examples], dtype=torch.float32)
    return batch


def collate_pairwise(
    examples: Sequence[dict[str, Any]], pad_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Chosen rows ``[0, B)`` then rejected rows ``[B, 2B)``, right-padded ``[2B, T]``."""
    ids = [e["chosen_input_ids"] for e in examples] + [e["rejected_input_ids"] for e in examples]
    masks = [e["chosen_loss_mask"] for e in examples] + [e["rejected_loss_mask"] for e in examples]
    batch: dict[str, Any] = _lm_batch(ids, masks, pad_id, pad_to_multiple_of)
    batch["num_pairs"] = len(examples)
    return batch


def collate_prompts(
    examples: Sequence[dict[str, Any]], pad_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """LEFT-padded ``input_ids`` / ``attention_mask`` plus ``prompt_text``, ``meta``, ``prompt_lengths``."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    ids = [e["prompt_ids"] for e in examples]
    width = _padded_len([len(s) for s in ids], pad_to_multiple_of)
    return {
        "input_ids": pad_sequences(ids, pad_id, side="left", length=width),
        "attention_mask": pad_sequences([[1] * len(s) for s in ids], 0, side="left", length=width),
        "prompt_lengths": torch.tensor([len(s) for s in ids], dtype=torch.long),
        "prompt_text": [e["prompt_text"] for e in examples],
        "meta": [e["meta"] for e in examples],
    }


def _default_collate(dataset: Any) -> Callable:
    from hbat.orchestrator.data.datasets import (
        PairwiseDataset,
        PointwiseDataset,
        PromptDataset,
        SFTDataset,
    )

    for cls, fn in (
        (SFTDataset, collate_sft),
        (PairwiseDataset, collate_pairwise),
        (PointwiseDataset, collate_pointwise),
        (PromptDataset, collate_prompts),
    ):
        if isinstance(dataset, cls):
            return fn
    raise TypeError(f"no default collate function for {type(dataset).__name__}; pass collate_fn")


def batches(
    dataset: Sequence[dict[str, Any]],
    batch_size: int,
    collate_fn: Callable[[Sequence[dict[str, Any]], int], Any] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    *,
    pad_id: int | None = None,
) -> Iterator[Any]:
    """Deterministic batches: ``collate_fn(examples, pad_id)`` for each.

    ``collate_fn`` defaults to the one matching the dataset type, ``pad_id``
    to ``dataset.pad_id``. With ``shuffle`` the order is a permutation drawn
    from ``random.Random(seed)`` (pass ``seed + epoch`` for a new order each
    epoch). ``drop_last`` drops a final short batch.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if collate_fn is None:
        collate_fn = _default_collate(dataset)
    if pad_id is None:
        pad_id = getattr(dataset, "pad_id", 0)
    order = list(range(len(dataset)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if drop_last and len(idx) < batch_size:
            return
        yield collate_fn([dataset[i] for i in idx], pad_id)
