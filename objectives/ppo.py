"""PPO for RLHF: KL-shaped rewards, GAE, clipped policy/value losses, group baselines.

Shapes: per-token tensors are ``[B,T-1]`` in the shifted convention of
:mod:`hbat.objectives.logprobs`; ``action_mask = loss_mask[:, 1:]`` marks the
response tokens. The response may sit anywhere in the row (left padding,
right padding, or both); nothing here assumes a fixed prompt length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kl import kl_estimate
from .masked import masked_mean, masked_var

__all__ = [
    "kl_penalized_rewards",
    "normalize_scores",
    "gae_advantages",
    "ppo_policy_loss",
    "ppo_value_loss",
    "group_relative_advantages",
]


def _last_index_onehot(action_mask: Tensor) -> Tensor:
    """Bool ``[B,T']``: True at the last non-zero position of each row (none if the row is empty)."""
    pos = torch.arange(action_mask.shape[1], device=action_mask.device).expand_as(action_mask)
    last = torch.where(action_mask != 0, pos, torch.full_like(pos, -1)).amax(dim=1, keepdim=True)
    return (pos == last) & (last >= 0)


def kl_penalized_rewards(
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    action_mask: Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> Tensor:
    """Per-token RLHF reward: KL penalty on every response token + score at the last one.

    Formula: ``R[b,t] = m[b,t] * (-kl_coef * k(logp, ref_logp)[b,t])
    + 1[t == last response token of row b] * scores[b]`` where ``k`` is the
    chosen estimator of :func:`hbat.objectives.kl.kl_estimate`. Rows with no
    response tokens get all zeros (the score is dropped).

    Paper: Ziegler et al. 2019 / Stiennon et al. 2020 / Ouyang et al. 2022
    (InstructGPT): r = r_phi(x,y) - beta * log(pi/pi_ref), spread per token.

    Why: the sequence-level reward-model score only exists at the end of the
    answer, while the KL term is known for every token; putting the penalty on
    each token gives GAE a dense signal. Same layout as TRL's ``PPOTrainer``
    (``non_score_reward = -kl_coef * kl``, score added at the last response
    token) and OpenRLHF.
    """
    kl = kl_estimate(logp, ref_logp, estimator)
    m = action_mask != 0
    rewards = torch.where(m, -kl_coef * kl, torch.zeros_like(kl))
    last = _last_index_onehot(action_mask)
    return rewards + last.to(rewards.dtype) * scores.to(rewards.dtype).unsqueeze(1)


def normalize_scores(
    scores: Tensor, clip: float | None = None, whiten: bool = False, eps: float = 1e-8
) -> Tensor:
    """Whiten and/or clip sequence-level reward-model scores ``[B] -> [B]``.

    Formula: if ``whiten``: ``s <- (s - mean(s)) / sqrt(var(s) + eps)``
    (unbiased variance over the batch; a batch of one becomes 0); then if
    ``clip`` is given: ``s <- clamp(s, -clip, clip)``. Whitening comes first so
    ``clip`` is in standard deviations when both are on.

    Paper: reward scaling/clipping, Huang et al. "The 37 implementation details
    of PPO" and "The N+ implementation details of RLHF with PPO" (2022/2024).

    Why: reward models have arbitrary offsets and scales; normalising makes
    ``kl_coef`` and the value-function scale transferable between reward
    models, and clipping bounds the damage of reward-model outliers.
    """
    s = scores
    if whiten:
        ones = torch.ones_like(s)
        mu = masked_mean(s, ones)
        s = (s - mu) * torch.rsqrt(masked_var(s, ones, unbiased=True) + eps)
    if clip is not None:
        s = s.clamp(-clip, clip)
    return s


@torch.no_grad()
def gae_advantages(
    token_rewards: Tensor, values: Tensor, action_mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation over the response tokens of each row.

    Formula (over the valid positions t_1 < t_2 < ... < t_n of a row, i.e.
    masked positions are skipped as if they were not there):
    ``delta_i = r_{t_i} + gamma * V_{t_{i+1}} - V_{t_i}`` with ``V_{t_{n+1}} = 0``
    (the episode ends after the last response token, no bootstrap);
    ``A_{t_i} = delta_i + gamma * lam * A_{t_{i+1}}``, ``A_{t_{n+1}} = 0``;
    ``returns = A + V``. Masked positions get advantage 0 and return 0.

    Paper: Schulman et al. 2016, "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation".

    Why: lam trades bias (lam=0: one-step TD) against variance (lam=1: Monte
    Carlo return minus V). Skipping masked positions (rather than treating them
    as zero-reward steps) keeps prompt padding on either side and masked
    tool/observation tokens inside a multi-turn response from breaking the
    chain. For contiguous responses this equals TRL's/OpenRLHF's backward loop
    with values and rewards zeroed outside the response. Runs under no_grad:
    advantages and returns are regression/PG targets, never differentiated.
    """
    m = (action_mask != 0)
    dtype = torch.promote_types(token_rewards.dtype, values.dtype)
    r = torch.where(m, token_rewards.to(dtype), torch.zeros((), dtype=dtype, device=m.device))
    v = torch.where(m, values.to(dtype), torch.zeros((), dtype=dtype, device=m.device))
    B, T = r.shape
    adv = torch.zeros_like(r)
    next_value = torch.zeros(B, dtype=dtype, device=r.device)
    next_adv = torch.zeros(B, dtype=dtype, device=r.device)
    for t in range(T - 1, -1, -1):
        valid = m[:, t]
        delta = r[:, t] + gamma * next_value - v[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = torch.where(valid, a, torch.zeros_like(a))
        next_value = torch.where(valid, v[:, t], next_value)
        next_adv = torch.where(valid, a, next_adv)
    returns = torch.where(m, adv + v, torch.zeros_like(adv))
    return adv, returns


def ppo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, action_mask: Tensor, clip_eps: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss, token-level masked mean.

    Formula: ``rho = exp(logp - old_logp)``;
    ``L = masked_mean(-min(rho * A, clip(rho, 1-eps, 1+eps) * A))``
    (= ``masked_mean(max(-rho*A, -clip(rho)*A))``) over all response tokens of
    the batch. Stats (detached float tensors): ``clipfrac`` = fraction of
    tokens where the clipped term is the active one,
    ``approx_kl = 0.5 * masked_mean((logp - old_logp)^2)``.

    Paper: Schulman et al. 2017, "Proximal Policy Optimization Algorithms".

    Why: the clip removes the incentive to move the ratio beyond ``1 +- eps``
    in the direction the advantage favours, which is what lets PPO run several
    epochs on one batch of rollouts. Matches TRL's ``PPOTrainer`` (same sign,
    token-level ``masked_mean`` over the batch, clipfrac from
    ``pg_losses2 > pg_losses``, approx_kl as the k2 estimator).
    """
    m = action_mask
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), m),
            "approx_kl": 0.5 * masked_mean(log_ratio.float() ** 2, m),
            # 1 exactly on the first update of a batch (same weights, dropout off)
            "ratio": masked_mean(ratio.float(), m),
            "ratio_max_dev": (ratio.float() - 1).abs().masked_fill(m == 0, 0).max(),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, action_mask: Tensor, clip_eps: float = 0.2
) -> tuple[Tensor, Tensor]:
    """Clipped value-function loss, token-level masked mean.

    Formula: ``v_clip = old + clamp(v - old, -eps, eps)``;
    ``L = 0.5 * masked_mean(max((v - R)^2, (v_clip - R)^2))``;
    ``clipfrac = masked_mean(1[(v_clip - R)^2 > (v - R)^2])`` (detached).

    Paper: the value clipping of OpenAI baselines' PPO2, analysed in Engstrom
    et al. 2020 / Huang et al. "37 implementation details of PPO".

    Why: limits how far one batch can move the critic from the values that
    produced the advantages. Matches TRL's ``PPOTrainer`` (``0.5 * masked_mean
    (max(vf_losses1, vf_losses2))``; TRL's default value clip range is also 0.2).
    """
    v_clip = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), action_mask)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), action_mask)
    return loss, clipfrac


def group_relative_advantages(
    scores: Tensor, group_size: int, method: str = "grpo", scale_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """Critic-free advantages from groups of samples of the same prompt: ``[B] -> [B]``.

    Rows are ``B/group_size`` consecutive groups of ``k = group_size`` samples.

    * ``"grpo"``: ``A_i = (s_i - mean_g) / (std_g + eps)``, ``std_g`` the unbiased
      (n-1) standard deviation of the group (0 when ``k == 1``); with
      ``scale_by_std=False`` just ``s_i - mean_g`` (Dr. GRPO, Liu et al. 2025,
      who argue the std division biases towards too-easy/too-hard prompts).
    * ``"rloo"``: ``A_i = s_i - (sum_g - s_i) / (k - 1)``, the leave-one-out
      baseline (requires ``k >= 2``; ``scale_by_std`` is ignored, RLOO is not
      scaled).

    Papers: GRPO -- Shao et al. 2024 (DeepSeekMath); RLOO -- Kool et al. 2019,
    Ahmadian et al. 2024 ("Back to Basics").

    Why: a per-prompt baseline removes the prompt-difficulty component of the
    reward without training a critic. TRL's ``GRPOTrainer`` uses the same
    unbiased ``torch.std`` (its eps is 1e-4); the leave-one-out baseline keeps
    the estimator unbiased because the baseline does not depend on the sample.
    A single-sample group gives advantage 0 for GRPO (no signal).
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [B], got shape {tuple(scores.shape)}")
    if group_size < 1 or scores.shape[0] % group_size != 0:
        raise ValueError(f"batch size {scores.shape[0]} is not a multiple of group_size={group_size}")
    g = scores.view(-1, group_size)
    if method == "grpo":
        centred = g - g.mean(dim=1, keepdim=True)
        if scale_by_std:
            if group_size > 1:
                std = g.std(dim=1, keepdim=True, unbiased=True)
            else:
                std = torch.zeros_like(centred)
            centred = centred / (std + eps)
        return centred.reshape(-1)
    if method == "rloo":
        if group_size < 2:
            raise ValueError("rloo needs group_size >= 2 (the baseline is the mean of the other samples)")
        baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
        return (g - baseline).reshape(-1)
    raise ValueError(f"unknown method {method!r}; valid: grpo, rloo")
