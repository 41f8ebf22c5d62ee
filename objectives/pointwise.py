"""Point-wise preference losses: point-wise DPO and ULMA (Cai et al., arXiv 2312.02554).

Inputs are per-response ``[B]`` tensors: ``policy_logps = log pi(y|x)`` and
``ref_logps = log pi_ref(y|x)`` (summed over response tokens, see
:func:`hbat.objectives.logprobs.sequence_logprobs`) and a label per response,
``labels in [0, 1]``: 1 = good, 0 = bad, values in between = continuous
quality (e.g. a normalised rating). Each function returns ``(loss, stats)``
like the pairwise losses, so the registry can treat both kinds alike.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pointwise_dpo_loss", "ulma_loss"]


def pointwise_dpo_loss(
    policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, beta: float = 0.1
) -> tuple[Tensor, dict[str, Tensor]]:
    """Point-wise DPO: binary cross-entropy on the implicit reward.

    Formula: ``r = policy_logps - ref_logps``;
    ``L = mean_b -[ z_b logsigmoid(beta r_b) + (1 - z_b) logsigmoid(-beta r_b) ]``
    with ``z = labels`` (binary or continuous in [0, 1]).

    Paper: Cai et al. 2023, "ULMA: Unified Language Model Alignment with Human
    Demonstration and Point-wise Preference" (arXiv 2312.02554), point-wise DPO.

    Why: when feedback is a score per response rather than a comparison, model
    ``P(good | x, y) = sigmoid(beta log(pi/pi_ref))`` -- the same implicit
    reward as DPO -- and maximise the label likelihood. Unlike pairwise DPO,
    the gradient for a positive and a negative sample are decoupled, and no
    pairing of responses is needed. TRL has no exact equivalent (its closest,
    BCO/KTO, add a reward shift / reference point).

    Stats (detached): ``reward`` = mean ``beta r``, ``accuracy`` = fraction
    with ``1[r > 0] == 1[label >= 0.5]``.
    """
    z = labels.to(policy_logps.dtype)
    logits = beta * (policy_logps - ref_logps)
    loss = -(z * F.logsigmoid(logits) + (1.0 - z) * F.logsigmoid(-logits))
    with torch.no_grad():
        stats = {
            "reward": logits.float().mean(),
            "accuracy": ((logits > 0) == (labels >= 0.5)).float().mean(),
        }
    return loss.mean(), stats


def ulma_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    beta: float = 0.1,
    num_tokens: Tensor | None = None,
    positive_nll: Tensor | None = None,
    label_mode: Literal["weight", "threshold"] = "weight",
) -> tuple[Tensor, dict[str, Tensor]]:
    """ULMA: SFT on positive samples, KL-regularised point-wise loss on negatives.

    Formula: with ``r = policy_logps - ref_logps`` and a positive weight ``z``,
    ``L = mean_b[ z_b * nll_b + (1 - z_b) * (-logsigmoid(-beta r_b)) ]``, where

    * ``z = labels`` (``label_mode="weight"``: binary labels select the term,
      continuous labels interpolate between the two), or
      ``z = 1[labels >= 0.5]`` (``label_mode="threshold"``);
    * ``nll = -policy_logps`` (NLL of the response), divided by
      ``num_tokens`` (clamped to >= 1) when given, i.e. the per-token SFT loss;
      or ``nll = positive_nll`` as given (already reduced however the caller
      likes). Passing both ``num_tokens`` and ``positive_nll`` is an error.

    ``-logsigmoid(-beta r) = -log(1 - sigmoid(beta log(pi/pi_ref)))`` is the
    negative-label half of point-wise DPO (:func:`pointwise_dpo_loss`).

    Paper: Cai et al. 2023, "ULMA: Unified Language Model Alignment with Human
    Demonstration and Point-wise Preference" (arXiv 2312.02554), the unified
    objective.

    Why: for a high-quality demonstration the positive half of point-wise DPO
    differs from SFT only by the KL regularisation towards ``pi_ref``; ULMA
    drops that regulariser for positives (fit good data as well as possible,
    as SFT does) but keeps it for negatives, where an unregularised "push
    down" term would let log-probs of bad answers -- and of everything near
    them -- collapse. One step thus learns from demonstrations and point-wise
    preferences together.

    Stats (detached): ``reward`` = mean ``beta r``, ``positive_nll`` and
    ``negative_loss`` (weighted means of the two terms; 0 if absent),
    ``positive_fraction`` = mean ``z``.
    """
    if positive_nll is not None and num_tokens is not None:
        raise ValueError("pass either positive_nll or num_tokens, not both (num_tokens only normalises -policy_logps)")
    if label_mode == "weight":
        z = labels.to(policy_logps.dtype)
    elif label_mode == "threshold":
        z = (labels >= 0.5).to(policy_logps.dtype)
    else:
        raise ValueError(f"unknown label_mode {label_mode!r}; valid: weight, threshold")
    if positive_nll is not None:
        nll = positive_nll
    else:
        nll = -policy_logps
        if num_tokens is not None:
            nll = nll / num_tokens.to(nll.dtype).clamp_min(1.0)
    logits = beta * (policy_logps - ref_logps)
    neg = -F.logsigmoid(-logits)
    loss = (z * nll + (1.0 - z) * neg).mean()
    with torch.no_grad():
        zs, ns = z.sum(), (1.0 - z).sum()
        stats = {
            "reward": logits.float().mean(),
            # an empty side gives 0/eps = 0, no host sync needed
            "positive_nll": ((z * nll).sum() / zs.clamp_min(1e-12)).float(),
            "negative_loss": (((1.0 - z) * neg).sum() / ns.clamp_min(1e-12)).float(),
            "positive_fraction": z.float().mean(),
        }
    return loss, stats
