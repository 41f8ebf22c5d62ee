"""What every benchmark report records about its own run: clocks and the code's revision."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    return time.perf_counter(), time.process_time()


def git_rev() -> str:
    """Short HEAD of the checkout, marked when the tree has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               check=False).stdout
        return rev + (" (uncommitted changes)" if dirty.strip() else "")
    except Exception:  # noqa: BLE001 - not a checkout
        return "unknown"
