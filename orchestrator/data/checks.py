"""Semantic checks on tokenised training data: records that are well-formed
but cannot teach anything, or that the length limits will certainly damage.

The schema layer (``schema.py``) rejects malformed records; these checks look
at what survives tokenisation and truncation, where a careful user's mistakes
show up (a preference file whose ``chosen`` was copied into ``rejected``,
``max_len`` too small for the responses, a file concatenated twice). Each
finding names the file and line of the first examples:

========================================  =========  =========================================
finding                                   severity   why
========================================  =========  =========================================
every pair has chosen == rejected         error      no preference signal at all: DPO's and the
                                                     reward model's loss are constant
some pairs have chosen == rejected        warning    those pairs add nothing but dilute batches;
(after truncation to ``max_len``)                    often a truncation limit that cuts both
                                                     responses before they differ
duplicate records                         warning    a file concatenated twice or a glob that
                                                     matches a copy: those examples get twice the
                                                     weight and leak across HBAT's shards
every response cut by ``max_len``         warning    no response keeps its end-of-turn token, so
                                                     the model never learns to stop
``on_overlong: skip`` dropped over half   warning    most of the data is silently unused
========================================  =========  =========================================

(Empty or whitespace-only responses, and records with no response token left
after truncation, are already errors in ``schema.py`` / ``tokenize.py``.)
"""

from __future__ import annotations

import logging
from typing import Any

from hbat.orchestrator.data.errors import DataError

logger = logging.getLogger("hbat.orchestrator.data")

SHOW = 3  # locations listed per finding


def _where(origins: list[tuple[str, str, int]], i: int) -> str:
    path, unit, number = origins[i]
    return f"{path}:{number}" if unit == "line" else f"{path}, {unit} {number}"


def _listed(items: list[str], total: int) -> str:
    more = f" and {total - len(items)} more" if total > len(items) else ""
    return ", ".join(items) + more


def _key(example: dict[str, Any]) -> tuple:
    return tuple((k, tuple(v) if isinstance(v, list) else repr(v)) for k, v in sorted(example.items()))


def check_examples(kind: str, examples: list[dict[str, Any]], origins: list[tuple[str, str, int]], *,
                   source: str, max_len: int | None, seen: int, skipped: int, truncated: int) -> None:
    """Run the checks of the table above; raise :class:`DataError` or log warnings."""
    if not examples:
        return
    if kind == "pairwise":
        same = [i for i, e in enumerate(examples) if e["chosen_input_ids"] == e["rejected_input_ids"]]
        if same:
            where = _listed([_where(origins, i) for i in same[:SHOW]], len(same))
            cut = f" after truncation to max_len={max_len}" if max_len is not None else ""
            if len(same) == len(examples):
                raise DataError(f"in every one of the {len(examples)} pairs 'chosen' and 'rejected' are identical{cut}: "
                                "the data has no preference signal", path=source)
            logger.warning("%s: %d of %d pairs have identical 'chosen' and 'rejected'%s (no preference signal): %s",
                           source, len(same), len(examples), cut, where)
    first: dict[tuple, int] = {}
    dups: list[tuple[int, int]] = []
    for i, e in enumerate(examples):
        k = _key({key: v for key, v in e.items() if key != "meta"} if kind == "prompts" else e)
        if k in first:
            dups.append((i, first[k]))
        else:
            first[k] = i
    if dups:
        where = _listed([f"{_where(origins, i)} repeats {_where(origins, j)}" for i, j in dups[:SHOW]], len(dups))
        logger.warning("%s: %d duplicate %s: %s", source, len(dups), "prompts" if kind == "prompts" else "records",
                       where)
    if kind != "prompts" and truncated and truncated >= len(examples) * (2 if kind == "pairwise" else 1):
        logger.warning("%s: every response was cut to max_len=%s, so none keeps its end-of-turn token and the model "
                       "never learns to stop; raise data.max_len", source, max_len)
    if skipped and skipped * 2 > seen:
        logger.warning("%s: on_overlong='skip' dropped %d of %d records (more than half); raise data.max_prompt_len "
                       "or use on_overlong='truncate'", source, skipped, seen)
