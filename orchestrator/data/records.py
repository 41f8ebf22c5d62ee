"""Reading raw records from JSONL / JSON / Parquet files.

Accepted inputs (``path``):

* a file: ``.jsonl``, ``.json-lines``, ``.jsonlines``, ``.ndjson`` (one JSON
  object per line; blank lines ignored), any of those with ``.gz``;
  ``.json`` (JSON lines, or a single top-level JSON array of objects);
  ``.parquet`` (one record per row; nested list/struct columns become Python
  lists/dicts);
* a directory: every supported file directly inside it, in sorted order (not
  recursive, so ``train/`` and ``test/`` sub-folders are never mixed);
* a glob pattern (``data/train-*.parquet``), matches in sorted order.

Nothing is ever skipped silently: invalid JSON, a line that is not a JSON
object, an unreadable file, or a file without records raises
:class:`~hbat.orchestrator.data.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

from hbat.orchestrator.data.errors import DataError, type_name

__all__ = ["RecordAt", "SUPPORTED_SUFFIXES", "expand_paths", "iter_records", "read_records"]

_JSONL_SUFFIXES = (".jsonl", ".json-lines", ".jsonlines", ".ndjson")
SUPPORTED_SUFFIXES = (
    _JSONL_SUFFIXES + (".json", ".parquet") + tuple(s + ".gz" for s in _JSONL_SUFFIXES + (".json",))
)


class RecordAt(NamedTuple):
    """One record and where it came from (for error messages)."""

    path: str  # the file, as the user would recognise it
    unit: str  # "line" | "row" | "record"
    number: int  # 1-based line / row / record index
    record: dict[str, Any]


def _kind(path: str) -> str | None:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet" if not path.lower().endswith(".gz") else None
    return None


def expand_paths(path: str | os.PathLike) -> list[str]:
    """The data files ``path`` stands for (file, directory or glob), sorted."""
    text = os.path.expanduser(os.path.expandvars(os.fspath(path)))
    if os.path.isdir(text):
        files = sorted(
            os.path.join(text, name)
            for name in os.listdir(text)
            if _kind(name) is not None and os.path.isfile(os.path.join(text, name))
        )
        if not files:
            raise DataError(
                f"directory holds no data files (expected {', '.join(SUPPORTED_SUFFIXES)})",
                path=text,
            )
        return files
    if os.path.isfile(text):
        if _kind(text) is None:
            raise DataError(
                f"unsupported file type (expected one of {', '.join(SUPPORTED_SUFFIXES)})",
                path=text,
            )
        return [text]
    if glob.has_magic(text):
        files = sorted(p for p in glob.glob(text) if os.path.isfile(p) and _kind(p) is not None)
        if not files:
            raise DataError("pattern matches no data files", path=text)
        return files
    raise DataError("no such file or directory", path=text)


def _open_binary(path: str):
    try:
        return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot open file ({exc.strerror or exc})", path=path) from None


def _read_error(exc: BaseException) -> str | None:
    """What a reader exception means to the user, or None if it is not a read error.

    ``gzip`` reports a file that is not gzip as ``BadGzipFile``, a truncated
    one as ``EOFError`` and corrupt compressed data as ``zlib.error``; a disk
    or network-filesystem failure is an ``OSError``. Each becomes a
    :class:`DataError` naming the file and the line reached, never a traceback.
    """
    if isinstance(exc, gzip.BadGzipFile):
        return f"not a gzip file ({exc}); rename it without .gz or compress it with gzip"
    if isinstance(exc, EOFError):
        return "the gzip file is truncated (it ends before the end of its compressed data)"
    if isinstance(exc, zlib.error):
        return f"corrupt gzip data ({exc})"
    if isinstance(exc, OSError):
        return f"cannot read file ({exc.strerror or exc})"
    return None


def _lines(fh, path: str) -> Iterator[tuple[int, bytes]]:
    """``enumerate(fh, 1)`` that turns decompression / IO failures into DataErrors at the line reached."""
    lineno = 0
    it = iter(fh)
    while True:
        try:
            raw = next(it)
        except StopIteration:
            return
        except (EOFError, zlib.error, OSError) as exc:
            raise DataError(_read_error(exc), path=path, line=lineno + 1) from None
        lineno += 1
        yield lineno, raw


def _iter_jsonl(path: str) -> Iterator[RecordAt]:
    with _open_binary(path) as fh:
        for lineno, raw in _lines(fh, path):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"not valid UTF-8 ({exc.reason})", path=path, line=lineno) from None
            if lineno == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"invalid JSON: {exc.msg} (column {exc.colno})", path=path, line=lineno
                ) from None
            if not isinstance(record, dict):
                raise DataError(f"expected a JSON object, got {type_name(record)}", path=path, line=lineno)
            yield RecordAt(path, "line", lineno, record)


def _iter_json(path: str) -> Iterator[RecordAt]:
    try:
        with _open_binary(path) as fh:
            head = fh.read(4096)
    except (EOFError, zlib.error, OSError) as exc:
        raise DataError(_read_error(exc), path=path, line=1) from None
    if not head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n").startswith("["):
        yield from _iter_jsonl(path)  # HF `Dataset.to_json` writes JSON lines
        return
    try:
        with _open_binary(path) as fh:
            raw = fh.read()
    except (EOFError, zlib.error, OSError) as exc:
        raise DataError(_read_error(exc), path=path) from None
    try:
        data = json.loads(raw.decode("utf-8").lstrip("\ufeff"))
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 ({exc.reason})", path=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path, line=exc.lineno) from None
    for index, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise DataError(
                f"expected a JSON object, got {type_name(record)}",
                path=path,
                line=index,
                unit="record",
            )
        yield RecordAt(path, "record", index, record)


def _iter_parquet(path: str) -> Iterator[RecordAt]:
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read Parquet file: {exc}", path=path) from None
    row = 0
    batches = pfile.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # noqa: BLE001 - a corrupt row group: pyarrow raises several types
            raise DataError(f"cannot read Parquet data after row {row}: {exc}", path=path, line=row + 1,
                            unit="row") from None
        if batch is None:
            return
        for record in batch.to_pylist():
            row += 1
            yield RecordAt(path, "row", row, record)


def iter_records(path: str | os.PathLike) -> Iterator[RecordAt]:
    """Yield every record of ``path`` (file, directory or glob) with its origin."""
    for file in expand_paths(path):
        kind = _kind(file)
        reader = {"jsonl": _iter_jsonl, "json": _iter_json, "parquet": _iter_parquet}[kind]
        count = 0
        for item in reader(file):
            count += 1
            yield item
        if count == 0:
            raise DataError("no records", path=file)


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_or_row_number, record)`` for every record in ``path``.

    For a directory or glob of several files the numbers restart in each file;
    use :func:`iter_records` to also get the file of each record.
    """
    for item in iter_records(path):
        yield item.number, item.record
