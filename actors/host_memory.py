"""Let a CPU training process reuse the large blocks it frees, instead of
faulting them in again every step (glibc malloc).

A training step on the CPU allocates and frees the same large buffers step
after step: the tied embedding's gradient alone is ``vocab x hidden`` fp32
(113 MB for SmolLM2-135M), and activations, their gradients and the bf16
copies autocast makes of the weights add hundreds more. glibc serves every
block above its mmap threshold (at most 32 MB by default) with a fresh
``mmap`` and gives it back to the kernel on ``free``, and trims the heap's
top above 128 KB; the next step then touches brand-new pages, each one a
page fault and a zero-fill. Measured on the bench's bf16-mixed DPO step
(SmolLM2-135M, 837 tokens, 2 threads, three pairs of runs): 196-333 K minor
page faults, about 1 GB mapped afresh, per step with glibc's defaults; none
in the steady state with the thresholds raised, and the step 2.60-2.77 s
instead of 2.94-3.14 s (about 12 % faster; fp32 5-10 %). Peak resident
memory of that process rose 6.5 % (3.83 -> 4.08 GB).

Raising both thresholds makes ``free`` keep those blocks on malloc's heap,
where the next step's ``malloc`` finds them mapped already. The price is that
the process's resident memory stays at its peak between steps, which a
training actor reaches again on its next step anyway. Model-holding actors
on a CPU device call this (the training roles and the reference through
``actors/training.py: setup_actor``, the HF rollout backend in
``actors/rollout.py``): on a GPU the big buffers are device memory, which
torch's caching allocator already reuses. Set ``HBAT_HOST_MALLOC=default`` to keep glibc's defaults,
or set glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
(they win); with another allocator preloaded (jemalloc, tcmalloc) this is a
no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: ``mallopt`` parameters (glibc ``malloc.h``)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: blocks below this come from the heap and are kept there when freed; above
#: it (whole multi-GB buffers) stay mmap'ed and go back to the kernel on free.
MMAP_THRESHOLD = 1 << 30
#: free memory at the heap's top is given back only above this much.
TRIM_THRESHOLD = (1 << 31) - 1

_applied: bool | None = None


def keep_freed_blocks() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once.

    Returns whether the thresholds are raised now (``False`` off glibc, with
    ``HBAT_HOST_MALLOC=default``, or where the user set glibc's own
    variables).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if (not sys.platform.startswith("linux") or os.environ.get("HBAT_HOST_MALLOC", "") == "default"
            or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


def thresholds_raised() -> bool:
    """Whether :func:`keep_freed_blocks` raised the thresholds in this process (without applying them)."""
    return bool(_applied)
