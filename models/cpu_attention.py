"""Which SDPA kernel a training forward uses on a CPU in bf16.

torch's CPU flash-attention kernel is the fast one for inference and for
long sequences, but its backward in bf16 is slow on short ones. For the
shapes of a DPO step on SmolLM2-135M (9 heads of 64; a causal 36-token
prefix, then 26 tail queries against 62 keys), forward + backward in bf16
took 8.5 and 8.0 ms per layer with the flash kernel against 3.4 and 5.9 ms
with the math kernel, which computes ``softmax(q k^T) v`` with ordinary
matmuls (torch upcasts bf16 to fp32 there, so it is no less exact): ~220 ms
of a ~2.6 s 30-layer step. The math kernel holds the full score matrix, so it
loses as sequences grow: at 128 causal positions it was still ahead (29 vs
35 ms, 16 rows), at 256 it took 1.2x the flash kernel's time, at 1024 2.3x.
So a bf16 *training* forward (autograd on) on a CPU uses the math kernel
while its keys number at most :data:`MATH_MAX_KEYS`; inference (no grad:
the flash forward is faster at every length), fp32 (a gain only on the
36-token prefix, slower from 62 keys on) and GPUs keep torch's own choice.
The table is ``bench/results/attention_kernels.md``
(``bench/attention_kernels.py``).

Memory: the math kernel keeps the fp32 score matrix for the backward, at
most ``rows x heads x MATH_MAX_KEYS^2`` values per layer (9 MB for 16 rows
of SmolLM2-135M), which the bound also keeps small.
"""

from __future__ import annotations

import contextlib

import torch

#: longest key sequence a bf16 training forward on a CPU runs with the math kernel
MATH_MAX_KEYS = 128


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
