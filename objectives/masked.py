"""Masked reductions: the one place that decides how padding is ignored.

Every loss in ``hbat.objectives`` reduces per-token quantities through these
helpers so that padding (left or right), prompt tokens and rows with no
response at all are handled the same way everywhere:

* masked positions never contribute, even if they hold ``inf`` or ``NaN``
  (e.g. log-probs of padding tokens) -- we select with ``torch.where`` instead
  of multiplying, because ``0 * inf`` is ``NaN``;
* an empty mask gives ``0``, never ``NaN``, and keeps the autograd graph
  connected (zero gradients), which matters under data parallelism where every
  rank must run the same backward.

Masks are 0/1 tensors broadcastable to ``x``; non-binary values act as weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten"]


def _select(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    mask = torch.broadcast_to(mask.to(x.dtype), x.shape)
    return torch.where(mask != 0, x, torch.zeros_like(x)) * mask, mask


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over positions where ``mask`` is non-zero.

    Formula: ``sum_i mask_i * x_i`` (over ``dim``, or over everything if
    ``dim is None``), with masked entries treated as exactly 0 even when
    ``x`` is non-finite there.

    Why: sequence log-probs are sums over response tokens only; padding
    positions may hold garbage that must not leak into the result or its
    gradient.
    """
    xm, _ = _select(x, mask)
    return xm.sum() if dim is None else xm.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is non-zero.

    Formula: ``sum_i mask_i x_i / sum_i mask_i``; when the mask sums to 0 the
    result is 0 (not NaN) and gradients are 0.

    Why: the token-level mean used by PPO/SFT losses (TRL's and OpenRLHF's
    ``masked_mean`` convention: one mean over all valid tokens of the batch
    when ``dim is None``). The empty-mask rule lets a micro-batch whose rows
    are all prompt/padding pass through the optimiser step harmlessly.
    """
    xm, m = _select(x, mask)
    if dim is None:
        num, den = xm.sum(), m.sum()
    else:
        num, den = xm.sum(dim=dim), m.sum(dim=dim)
    return num / torch.where(den != 0, den, torch.ones_like(den))


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries of ``x`` (over all dimensions).

    Formula: ``v = masked_mean((x - mu)^2)`` with ``mu = masked_mean(x)``;
    if ``unbiased`` the Bessel correction ``v * n / (n - 1)`` is applied with
    ``n = sum(mask)``. For ``n <= 1`` the variance is defined as 0 (TRL raises
    instead; we prefer a finite value so one-token batches do not crash).

    Why: used to whiten rewards and advantages (PPO; TRL ``masked_var``
    convention with ``unbiased=True``).
    """
    mu = masked_mean(x, mask)
    var = masked_mean((x - mu) ** 2, mask)
    if unbiased:
        n = torch.broadcast_to(mask, x.shape).to(x.dtype).sum()
        factor = torch.where(n > 1, n / (n - 1).clamp_min(1e-12), torch.zeros_like(n))
        var = var * factor
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Standardise the masked entries of ``x`` to zero mean and unit variance.

    Formula: ``(x - mu) / sqrt(var + eps)`` with ``mu``/``var`` from
    :func:`masked_mean` / :func:`masked_var` (unbiased); if ``shift_mean`` is
    False the mean is added back (``mu + (x - mu) / sqrt(var + eps)``), i.e.
    only the scale is normalised -- TRL's ``masked_whiten`` convention, used
    for rewards where the sign of the mean carries information.

    Masked positions are returned as 0 so that whitened advantages can be fed
    straight into a masked loss.

    Why: advantage normalisation (PPO implementation detail #7 in Huang et al.
    "The 37 implementation details of PPO") makes the policy-gradient scale
    independent of the reward scale.
    """
    mu = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x - mu) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mu
    m = torch.broadcast_to(mask, x.shape)
    return torch.where(m != 0, out, torch.zeros_like(out))
