"""The one exception the data layer raises for bad input data.

A :class:`DataError` always says *where* the problem is, so a user can open the
file and fix it::

    data/train.jsonl, line 17, field 'chosen': expected a non-empty string, got int
    data/prefs.parquet, row 3, field 'label': expected a bool or a number in [0, 1], got 1.5
    <memory>, record 2, field 'messages[1].role': expected one of 'system', 'user', 'assistant', 'tool', got 'bot'
    data/empty.jsonl: no records

For JSONL files the number is the 1-based physical line; for Parquet files it
is the 1-based row; for JSON-array files and in-memory records it is the
1-based record index.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DataError", "type_name"]


class DataError(ValueError):
    """A record (or a whole file) is not usable training data.

    Attributes:
        path: the file (as given by the user) or ``"<memory>"``; may be None.
        line: 1-based line (JSONL), row (Parquet) or record index; None when
            the problem concerns the whole file.
        field: dotted field name inside the record (``"chosen"``,
            ``"messages[2].role"``); None when not about a single field.
        unit: the word used for ``line`` in the message (``"line"``, ``"row"``
            or ``"record"``).
        reason: the message without the location prefix.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        unit: str = "line",
    ) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.unit = unit
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.line is not None:
            where.append(f"{self.unit} {self.line}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        if not where:
            return self.reason
        return f"{', '.join(where)}: {self.reason}"

    def __reduce__(self):  # keyword-only __init__: make pickling (Ray) work
        return (
            _rebuild_data_error,
            (self.reason, self.path, self.line, self.field, self.unit),
        )


def _rebuild_data_error(reason, path, line, field, unit) -> DataError:
    return DataError(reason, path=path, line=line, field=field, unit=unit)


def type_name(value: Any) -> str:
    """JSON-flavoured type name used in error messages (``got int``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__
