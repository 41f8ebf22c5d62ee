"""The machine's matmul ceiling, shared by the benchmarks that state a FLOP floor.

A dense decoder's training step costs about ``6 x parameters x tokens`` FLOPs
(forward 2, backward 4; attention aside). At the best square-matmul
throughput this machine reaches in a dtype, that is the least time a step
can take: the *floor*. Benchmarks report their measured step against it.
"""

from __future__ import annotations

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
