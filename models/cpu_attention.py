"""Which SDPA kernel a training forward uses on a CPU in bf16.

torch's CPU flash-attention kernel is the fast one for inference and for
long sequences, but its backward in bf16 is slow on short ones: for the
shapes of a DPO or GRPO step on SmolLM2-135M (9 heads of 64, 26-62
positions), forward + backward took 5.7 ms (causal, 36 positions) and 8.5 ms
(26 queries against 62 keys) per layer with the flash kernel against 1.8 and
4.1 ms with the math kernel, which computes ``softmax(q k^T) v`` with
ordinary matmuls in fp32 (torch upcasts bf16 there). Per 30-layer step that
is ~250 ms of a ~2.6 s step. The math kernel holds the full score matrix, so
it loses as sequences grow: even at 128 keys it was still ahead (29.8 vs 36.4
ms, 16 rows), at 256 about even, and at 512 it took 1.7x the flash kernel's
time. So a bf16 *training* forward (autograd on) on a CPU uses the math kernel
while its keys number at most :data:`MATH_MAX_KEYS`; inference (no grad), fp32
and GPUs keep torch's own choice (measured: fp32 gains little, and a
forward-only pass is faster with the flash kernel). Measurements:
``bench/attention_kernels.py``.
"""

from __future__ import annotations

import contextlib

import torch

#: longest key sequence a bf16 training forward on a CPU runs with the math kernel
MATH_MAX_KEYS = 256


@contextlib.contextmanager
def training_attention(device: torch.device | str, computes_bf16: bool, seq_len: int):
    """Around one forward: the math SDPA kernel where it trains faster (see the
    module docstring), else torch's own choice. Autograd's mode is read on entry."""
    if (torch.device(device).type == "cpu" and computes_bf16 and seq_len <= MATH_MAX_KEYS
            and torch.is_grad_enabled()):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.MATH]):
            yield
    else:
        yield
