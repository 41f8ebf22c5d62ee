"""Supervised fine-tuning (instruction) loss on response tokens only."""

from __future__ import annotations

from torch import Tensor

from .logprobs import token_logprobs
from .masked import masked_mean

__all__ = ["sft_loss"]


def sft_loss(logits: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """Token-level mean negative log-likelihood of the response tokens (scalar).

    Formula: ``L = - sum_{b,t} m[b,t] * lp[b,t] / sum_{b,t} m[b,t]`` with
    ``lp = token_logprobs(logits, input_ids)`` (shifted, ``[B,T-1]``) and
    ``m = loss_mask[:, 1:]``. A batch with no response tokens gives 0.

    Paper: the SFT / behaviour-cloning step of InstructGPT (Ouyang et al.
    2022); in HBAT (arXiv 2406.15178) it is the instruction-phase objective
    L_SFT.

    Why token-level mean: it is what Hugging Face ``CrossEntropyLoss`` with
    ``ignore_index=-100`` computes and what TRL's ``SFTTrainer`` uses with
    ``completion_only_loss`` (labels of prompt/padding set to -100, mean over
    the remaining tokens of the batch), so loss curves are comparable to TRL
    runs. Every response token weighs the same, so long answers weigh more than
    short ones -- the usual choice for instruction tuning.
    """
    return -masked_mean(token_logprobs(logits, input_ids), loss_mask[:, 1:])
