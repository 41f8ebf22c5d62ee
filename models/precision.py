"""Numeric precision of a run: what each role holds and what it computes in.

One config choice, ``model.precision``, decides it for every role:

=============  ===========================  ===================  ==================================
precision      trainable weights + AdamW     forward/backward     frozen roles (reference, reward
               state (policy, critic, RM)                         scoring, rollout) hold
=============  ===========================  ===================  ==================================
``fp32``       fp32                          fp32                 fp32
``bf16-mixed`` fp32 (master weights)         bf16 autocast        bf16
``bf16-pure``  bf16 (lossy)                  bf16                 bf16
=============  ===========================  ===================  ==================================

Why ``bf16-mixed`` is the one to use on accelerators: an AdamW step moves a
weight by about ``lr`` (1e-6 .. 1e-5), far below bf16's resolution (8 bits of
mantissa: a weight of 0.02 has a spacing of ~1.2e-4), so with weights and
optimizer state in bf16 (``bf16-pure``) most updates round back to the old
value -- measured, 20 steps at lr 1e-6 changed ~2 % of the weights. Keeping
fp32 master weights and computing in bf16 (autocast) is what every RLHF
framework does. ``bf16-pure`` stays available, on purpose, for memory-bound
experiments and is documented as lossy.

Autocast on CPU is used only where the CPU has native bf16 support
(AVX-512 BF16 / AMX, checked through oneDNN); elsewhere ``bf16-mixed`` computes
in fp32 -- still correct, just not faster.

Log-probabilities are always taken from fp32 logits
(:func:`hbat.objectives.token_logprobs` upcasts), so PPO ratios and KL terms
do not inherit bf16 rounding from the softmax.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16-mixed", "bf16-pure")

#: deprecated ``model.dtype`` values -> ``model.precision``
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16-pure", "auto": "bf16-mixed"}


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # very old builds without the op
        return False


@dataclass(frozen=True)
class Precision:
    """How a role stores and computes; build with :func:`precision`."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise ValueError(f"unknown precision '{self.name}'; choose one of {', '.join(PRECISIONS)}")

    @property
    def train_dtype(self) -> torch.dtype:
        """dtype of trainable weights and hence of their optimizer state."""
        return torch.bfloat16 if self.name == "bf16-pure" else torch.float32

    @property
    def frozen_dtype(self) -> torch.dtype:
        """dtype of weights that are never updated (inference-only roles)."""
        return torch.float32 if self.name == "fp32" else torch.bfloat16

    @property
    def frozen_dtype_name(self) -> str:
        return "float32" if self.name == "fp32" else "bfloat16"

    def autocasts(self, device: torch.device | str) -> bool:
        """Whether :meth:`autocast` is on for ``device``: ``bf16-mixed`` where it has bf16."""
        dev = torch.device(device)
        if self.name != "bf16-mixed":
            return False
        if dev.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return dev.type == "cpu" and cpu_supports_bf16()

    def autocast(self, device: torch.device | str):
        """bf16 autocast for ``bf16-mixed`` where the device supports bf16; else a no-op."""
        if not self.autocasts(device):
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

    def computes_bf16(self, device: torch.device | str) -> bool:
        """Whether a forward of this precision on ``device`` runs its matmuls and attention in bf16."""
        return self.name == "bf16-pure" or self.autocasts(device)

    @contextlib.contextmanager
    def compute(self, device: torch.device | str, seq_len: int):
        """The context a role's forward of ``seq_len`` positions runs in: :meth:`autocast`
        and, for a bf16 training forward on a CPU, the attention kernel that
        trains faster there (``models/cpu_attention.py``)."""
        from hbat.models.cpu_attention import training_attention

        with self.autocast(device), training_attention(device, self.computes_bf16(device), seq_len):
            yield


def precision(name: str | Precision) -> Precision:
    return name if isinstance(name, Precision) else Precision(DTYPE_ALIASES.get(name, name))
