"""Turn a scored experience batch into PPO targets on the driver.

Kept out of the actors: it needs the outputs of four roles at once (policy and
reference log-probs, reward scores, critic values) and is cheap tensor math.
"""

from __future__ import annotations

import torch

from hbat.actors.experience import Experience
from hbat.objectives import (
    gae_advantages,
    group_relative_advantages,
    kl_estimate,
    kl_penalized_rewards,
    masked_mean,
    masked_sum,
    masked_whiten,
    normalize_scores,
)


def compute_targets(exp: Experience, ppo, group_size: int) -> tuple[Experience, dict]:
    """Fill token_rewards, advantages, returns; return stats for logging.

    ``gae``: per-token rewards = -kl_coef * KL + score at the last token, then
    GAE with the critic's values. ``grpo``/``rloo``: the KL-penalised sequence
    score is compared within each prompt's group; no critic needed.

    ``ppo.missing_eos_penalty`` is subtracted from the score of responses that
    hit ``max_new_tokens`` without an end token, before anything else. Batch
    whitening of the advantages follows ``ppo.whiten_advantages``: on for GAE,
    off for group baselines -- those are already centred per prompt, and a
    token-weighted batch mean would let long responses flip the sign of a
    better-than-average sample and give groups with no signal non-zero
    advantages.
    """
    mask = exp.action_mask
    raw = exp.scores
    truncated = None
    if exp.eos is not None:
        truncated = ~exp.eos.bool()
        if ppo.missing_eos_penalty:
            raw = raw - ppo.missing_eos_penalty * truncated.to(raw.dtype)
    scores = normalize_scores(raw, clip=ppo.score_clip, whiten=ppo.whiten_scores)
    # without a KL term the step skips the reference (and maybe the old-policy)
    # forward: the KL is then exactly 0 and is not reported
    measured_kl = exp.logprobs is not None and exp.ref_logprobs is not None
    logp = exp.logprobs if measured_kl else torch.zeros_like(mask, dtype=torch.float32)
    ref = exp.ref_logprobs if measured_kl else logp
    kl = kl_estimate(logp, ref, ppo.kl_estimator) * mask
    if ppo.advantage == "gae":
        token_rewards = kl_penalized_rewards(scores, logp, ref, mask, ppo.kl_coef, ppo.kl_estimator)
        adv, ret = gae_advantages(token_rewards, exp.values, mask, ppo.gamma, ppo.lam)
    else:
        seq = scores - ppo.kl_coef * masked_sum(kl, mask, dim=1)
        seq_adv = group_relative_advantages(seq, group_size, method=ppo.advantage, scale_by_std=ppo.group_std_scaling)
        adv = seq_adv[:, None] * mask
        ret = adv.clone()
        token_rewards = torch.zeros_like(adv)
    if ppo.whiten_advantages:
        adv = masked_whiten(adv, mask) * mask
    stats = {
        "ppo/score": float(raw.mean()),
        "ppo/score_std": float(raw.std()) if len(raw) > 1 else 0.0,
        "ppo/response_len": float(mask.sum(1).float().mean()),
        "ppo/advantage_mean": float(masked_mean(adv, mask)),
    }
    if measured_kl:
        stats["ppo/kl"] = float(masked_sum(kl, mask, dim=1).mean())
    if truncated is not None:
        stats["ppo/truncated_frac"] = float(truncated.float().mean())
    if exp.values is not None and ppo.advantage == "gae":
        stats["ppo/value_mean"] = float(masked_mean(exp.values, mask))
    return exp.with_fields(token_rewards=token_rewards, advantages=adv, returns=ret), stats
