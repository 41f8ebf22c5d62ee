"""DPO data curriculum: preference pairs from easy to hard (``preference_loss.curriculum``).

Xu et al. (contrastive post-training, arXiv 2310.02263) found DPO learns
better when it first sees *easy* pairs -- chosen and rejected answers from
models far apart in strength (GPT-4 vs InstructGPT) -- and later *hard* ones
(GPT-4 vs ChatGPT). Here the difficulty of a pair is read from its record:

* ``strength_gap``: the record's ``strength_gap`` (else ``rejected_rank -
  chosen_rank``), as ``hbat build-pairs`` writes it -- a larger rank gap is
  easier; pairs from one model with two prompts have gap 0, the hardest;
* ``score_gap``: the record's ``score_gap`` (else ``chosen_score -
  rejected_score``) -- a larger reward margin is easier.

How it enters training (the driver calls the two functions below):

1. :func:`curriculum_order` sorts the whole preference dataset by
   decreasing gap (stable: ties keep file order) *before* the schedule cuts
   it into its T contiguous shards, so round 1's preference phase trains the
   easiest pairs and round T's the hardest;
2. :func:`curriculum_batch` replaces the random batch of a step by a window
   of the sorted shard that walks from its easiest to its hardest end over
   the phase's steps (step k of S starts at ``round(k (n - bs) / (S - 1))``),
   so the order holds within a phase whatever its step budget.

``none`` (the default) changes nothing: the driver keeps its seeded random
batches, bit for bit. The keys are read from the source records the dataset
was built from (``TokenizedDataset.source_of``), so tokenised examples stay
as they are.
"""

from __future__ import annotations

import math
from typing import Literal

from hbat.orchestrator.data.errors import DataError
from hbat.orchestrator.data.records import iter_records

__all__ = ["CURRICULA", "Curriculum", "curriculum_batch", "curriculum_order", "difficulty"]

Curriculum = Literal["none", "strength_gap", "score_gap"]
CURRICULA: tuple[str, ...] = ("none", "strength_gap", "score_gap")

_FALLBACK = {"strength_gap": ("rejected_rank", "chosen_rank"), "score_gap": ("chosen_score", "rejected_score")}


def _gap(record: dict, key: str) -> float:
    """The record's ``key`` gap (or the difference of its two parts); DataError naming the field if absent."""
    value = record.get(key)
    if value is None:
        a, b = _FALLBACK[key]
        if record.get(a) is None or record.get(b) is None:
            raise DataError(f"preference_loss.curriculum '{key}' needs '{key}' (or '{a}' and '{b}') in every pair; "
                            "hbat build-pairs writes them", field=key)
        value = _number(record[a], a) - _number(record[b], b)
    return _number(value, key)


def _number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise DataError(f"expected a finite number, got {value!r}", field=field)
    return float(value)


def difficulty(ds, key: str) -> list[float]:
    """The gap of every example of ``ds`` (a PairwiseDataset), read from its source records."""
    wanted: dict[str, set[int]] = {}
    for i in range(len(ds)):
        path, _, number = ds.source_of(i)
        wanted.setdefault(path, set()).add(number)
    gaps: dict[tuple[str, int], float] = {}
    for path, numbers in wanted.items():
        for item in iter_records(path):
            if item.number in numbers:
                try:
                    gaps[(item.path, item.number)] = _gap(item.record, key)
                except DataError as exc:
                    raise DataError(exc.reason, path=item.path, line=item.number, field=exc.field,
                                    unit=item.unit) from None
    return [gaps[(p, n)] for p, _, n in (ds.source_of(i) for i in range(len(ds)))]


def curriculum_order(ds, curriculum: str):
    """``ds`` sorted easy to hard (largest gap first; ties in file order), or ``ds`` itself for ``none``."""
    if curriculum == "none" or ds is None:
        return ds
    if curriculum not in CURRICULA:
        raise ValueError(f"unknown curriculum {curriculum!r}; valid: {', '.join(CURRICULA)}")
    gaps = difficulty(ds, curriculum)
    return ds.select(sorted(range(len(ds)), key=lambda i: (-gaps[i], i)))


def curriculum_batch(n: int, bs: int, step: int, steps: int) -> list[int]:
    """Indices of step ``step`` of ``steps`` into an ordered shard of ``n``: a window of ``bs``
    consecutive examples sliding from the start (easiest) to the end (hardest) of the shard."""
    if n <= bs:
        return list(range(n))
    start = 0 if steps <= 1 else round(step * (n - bs) / (steps - 1))
    return list(range(start, start + bs))
