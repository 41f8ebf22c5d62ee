"""Per-token KL estimators (Schulman, "Approximating KL divergence", 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kl_estimate", "KL_ESTIMATORS"]

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from ``pi``.

    With ``d = ref_logp - logp`` (log of the ratio pi_ref/pi at the sampled token):

    * ``k1 = -d = logp - ref_logp`` -- unbiased, high variance, can be negative;
    * ``k2 = 0.5 * d^2`` -- biased, low variance, always >= 0;
    * ``k3 = exp(d) - d - 1`` -- unbiased *and* always >= 0 (it is k1 plus the
      zero-mean control variate ``exp(d) - 1``).

    Unbiased means ``E_{y~pi}[k(y)] = KL(pi || pi_ref)``; this only holds when
    the tokens come from ``pi`` (rollouts of the current policy).

    Paper: J. Schulman, "Approximating KL divergence" (blog, 2020).

    Why: PPO-RLHF subtracts ``kl_coef * KL`` from the per-token reward to keep
    the policy near the reference. TRL's ``PPOTrainer`` uses ``k1`` by default
    and offers ``k3`` (``kl_estimator="k3"``) with the same formulas and sign
    (``logr = ref - logp``); GRPO (DeepSeekMath) uses ``k3`` as a loss term.
    Computed in the dtype of the inputs; the clamp-free form is kept so that
    gradients are exact.
    """
    if estimator == "k1":
        return logp - ref_logp
    d = ref_logp - logp
    if estimator == "k2":
        return 0.5 * d.pow(2)
    if estimator == "k3":
        return torch.expm1(d) - d
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")
