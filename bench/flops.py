"""The machine's matmul ceiling, shared by the benchmarks that state a FLOP floor.

A dense decoder's training step costs about ``6 x parameters x tokens`` FLOPs
(forward 2, backward 4; attention aside). At the best square-matmul
throughput this machine reaches in a dtype, that is the least time a step
can take: the *floor*. Benchmarks report their measured step against it.
"""

from __future__ import annotations

import statistics
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_ceiling(threads: int, n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an ``n x n`` matmul in ``dtype`` with ``threads`` torch threads (best of 5).

    The caller's thread setting is restored afterwards.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(5))
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / best


class CeilingSamples:
    """The matmul ceiling of each dtype, sampled again before every round of a benchmark.

    On a shared machine the ceiling itself moves (the bf16 one measured 875
    GFLOP/s one evening and 416 three days later): a floor stated at a ceiling
    taken once, at start, can belong to a quieter or a busier moment than the
    steps it is compared with. Sampling it between rounds and stating the
    median with its range ties the "% of the floor" to the same spell of the
    machine as the medians of the timed steps.
    """

    def __init__(self, threads: int, dtypes) -> None:
        self.threads = threads
        self.samples: dict[torch.dtype, list[float]] = {dt: [] for dt in dtypes}

    def sample(self, dtype: torch.dtype | None = None) -> None:
        """Measure ``dtype``'s ceiling (every dtype's by default) once more: about a second each."""
        for dt, values in self.samples.items():
            if dtype is None or dt == dtype:
                values.append(matmul_ceiling(self.threads, dtype=dt))

    def median(self, dtype: torch.dtype) -> float:
        return statistics.median(self.samples[dtype])

    def describe(self, dtype: torch.dtype) -> str:
        """``'412 GFLOP/s (median of 5 samples taken between rounds, 367-417)'``."""
        v = self.samples[dtype]
        if len(v) == 1:
            return f"{v[0] / 1e9:.0f} GFLOP/s (one sample)"
        return (f"{self.median(dtype) / 1e9:.0f} GFLOP/s (median of {len(v)} samples taken between rounds, "
                f"{min(v) / 1e9:.0f}-{max(v) / 1e9:.0f})")


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the matmuls of a training step run in under an hbat precision name."""
    return torch.float32 if precision == "fp32" else torch.bfloat16


def train_flops(n_params: int, tokens: int) -> float:
    """``6 x params x tokens``: forward + backward matmul FLOPs of a dense decoder (attention aside)."""
    return 6.0 * n_params * tokens


def param_count(model: str) -> int:
    """Parameters of a causal LM checkpoint (shared tensors once), counted without loading its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    return sum(p.numel() for p in m.parameters())


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
