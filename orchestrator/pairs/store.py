"""Crash-safe, append-only output of ``build-pairs``.

Three files in ``output_dir``: ``pairs.jsonl`` and ``pointwise.jsonl`` (the
rows) and ``done.jsonl`` (the journal). One batch is committed as: append its
rows to the two data files, flush and fsync them, then append one journal
line ``{"done": [[prompt_id, strategy], ...], "bytes": {"pairs": N, ...}}``
(the data files' sizes after the batch), flush and fsync. The journal line
is the commit point.

Why this is enough: a crash before the journal line leaves rows of an
uncommitted batch at the end of the data files (perhaps a torn line); on
reopening, every data file is cut back to the size the last complete journal
line recorded, so those rows disappear and their (prompt, strategy) units --
absent from the done-set -- are generated again. A torn journal line is
ignored (and cut). So a killed build resumes without regenerating finished
prompts and never writes a duplicate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA_FILES = ("pairs", "pointwise")


class PairStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.paths = {k: self.folder / f"{k}.jsonl" for k in DATA_FILES}
        self.journal = self.folder / "done.jsonl"
        self.done: set[tuple[str, str]] = set()
        self.counts: dict[str, int] = {}  # rows per strategy, committed
        self.recovered_bytes = 0  # bytes of uncommitted rows cut on open
        self._recover()

    # ------------------------------------------------------------ recovery
    def _recover(self) -> None:
        sizes = {k: 0 for k in DATA_FILES}
        good = 0  # journal bytes up to the last complete line
        if self.journal.exists():
            raw = self.journal.read_bytes()
            pos = 0
            for line in raw.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break  # torn last line: not committed
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    break
                pos += len(line)
                good = pos
                self.done.update((str(p), str(s)) for p, s in entry["done"])
                for s, n in entry.get("rows", {}).items():
                    self.counts[s] = self.counts.get(s, 0) + int(n)
                sizes = {k: int(entry["bytes"][k]) for k in DATA_FILES}
            if good < len(raw):
                _truncate(self.journal, good)
        for k, path in self.paths.items():
            size = path.stat().st_size if path.exists() else 0
            if size > sizes[k]:
                self.recovered_bytes += size - sizes[k]
                _truncate(path, sizes[k])
            elif size < sizes[k]:
                raise RuntimeError(f"{path} is shorter than {self.journal} says ({size} < {sizes[k]} bytes): "
                                   "it was edited or truncated; start a new output_dir")

    # ------------------------------------------------------------ commit
    def commit(self, rows: dict[str, list[dict]], done: list[tuple[str, str]], per_strategy: dict[str, int]) -> None:
        """Append one batch's rows and mark its (prompt_id, strategy) units done (the commit point)."""
        again = [d for d in done if d in self.done]
        if again:  # the builder never asks for this; refuse rather than write a duplicate
            raise RuntimeError(f"units already done: {again[:3]}")
        sizes = {}
        for k in DATA_FILES:
            with open(self.paths[k], "ab") as fh:
                for row in rows.get(k, []):
                    fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
                fh.flush()
                os.fsync(fh.fileno())
                sizes[k] = fh.tell()
        entry = {"done": [list(d) for d in done], "rows": per_strategy, "bytes": sizes}
        with open(self.journal, "ab") as fh:
            fh.write((json.dumps(entry) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
        self.done.update(done)
        for s, n in per_strategy.items():
            self.counts[s] = self.counts.get(s, 0) + n


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())
