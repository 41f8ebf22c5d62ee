"""The evaluation set: one JSONL/JSON/Parquet record per prompt.

Fields (all but the prompt optional; anything else is kept in ``meta``):

``prompt`` (or ``messages``)
    a string or a chat message list not ending with an assistant turn;
``reference``
    a reference answer (string) or several (list of strings) for ROUGE and
    the demo task's exact-answer check. If absent, a string ``response`` /
    ``completion`` field is used instead, so an SFT file doubles as an eval set;
``instruction_id_list`` + ``kwargs``
    IFEval's verifiable instructions (``kwargs`` one dict per id, may be
    omitted when every instruction takes no argument).

Every record is validated before any model loads; a bad one raises
:class:`~hbat.orchestrator.data.DataError` naming file, line and field.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from hbat.orchestrator.data import DataError
from hbat.orchestrator.data.errors import type_name
from hbat.orchestrator.data.records import iter_records
from hbat.orchestrator.data.schema import normalize_prompt

__all__ = ["EvalExample", "load_eval_set", "eval_set_from_records", "fingerprint"]


@dataclass
class EvalExample:
    prompt: str | list[dict]
    references: list[str] = field(default_factory=list)
    instruction_id_list: list[str] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The prompt as plain text (last user message of a conversation)."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m["content"] for m in self.prompt if m.get("role") == "user"]
        return users[-1] if users else self.prompt[-1]["content"]


def _references(record: dict) -> list[str]:
    key = "reference" if "reference" in record else next(
        (k for k in ("response", "completion") if isinstance(record.get(k), str)), None)
    if key is None or record[key] is None:
        return []
    value = record[key]
    values = value if isinstance(value, list) else [value]
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            where = key if not isinstance(value, list) else f"{key}[{i}]"
            raise DataError(f"expected a string (or a list of strings), got {type_name(v)}", field=where)
        out.append(str(v))
    return out


def _instructions(record: dict) -> tuple[list[str], list[dict]]:
    ids = record.get("instruction_id_list")
    if ids is None:
        if record.get("kwargs") is not None:
            raise DataError("'kwargs' given without 'instruction_id_list'", field="kwargs")
        return [], []
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise DataError(f"expected a non-empty list of instruction ids (strings), got {ids!r}",
                        field="instruction_id_list")
    kwargs = record.get("kwargs")
    if kwargs is None:
        kwargs = [{} for _ in ids]
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise DataError(f"expected a list of {len(ids)} dicts (one per instruction id), got {kwargs!r}",
                        field="kwargs")
    for i, kw in enumerate(kwargs):
        if kw is None:
            kwargs[i] = {}
        elif not isinstance(kw, dict):
            raise DataError(f"expected a dict of arguments, got {type_name(kw)}", field=f"kwargs[{i}]")
    # Parquet (and HF exports) fill absent arguments with nulls: they mean "not given"
    return list(ids), [{k: v for k, v in kw.items() if v is not None} for kw in kwargs]


def _example(record: dict) -> EvalExample:
    item = normalize_prompt(record)
    refs = _references(record)
    ids, kwargs = _instructions(record)
    meta = {k: v for k, v in item.meta.items() if k not in ("instruction_id_list", "kwargs")}
    return EvalExample(item.prompt, refs, ids, kwargs, meta)


def load_eval_set(path: str | os.PathLike, limit: int | None = None) -> list[EvalExample]:
    """Read and validate an eval file (JSONL / JSON / Parquet, a folder or a glob)."""
    out: list[EvalExample] = []
    for at in iter_records(path):
        if limit is not None and len(out) >= limit:
            break
        try:
            out.append(_example(at.record))
        except DataError as exc:
            raise DataError(exc.reason, path=at.path, line=at.number, field=exc.field, unit=at.unit) from None
    return out


def eval_set_from_records(records: list[dict], source: str = "<memory>") -> list[EvalExample]:
    out = []
    for n, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"expected a record object (dict), got {type_name(record)}", path=source, line=n,
                            unit="record")
        try:
            out.append(_example(record))
        except DataError as exc:
            raise DataError(exc.reason, path=source, line=n, field=exc.field, unit="record") from None
    if not out:
        raise DataError("no records", path=source)
    return out


def fingerprint(examples: list[EvalExample]) -> str:
    """A short hash of the eval set's content (recorded with every result)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.prompt, ex.references, ex.instruction_id_list, ex.kwargs], sort_keys=True).encode())
    return h.hexdigest()[:16]
