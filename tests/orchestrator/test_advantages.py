"""``compute_targets``: the driver's turn from a scored rollout to PPO targets.

Expected values are re-derived by hand here (group means, leave-one-out
baselines, KL-shaped token rewards), not by calling the objectives again.
"""

from __future__ import annotations

import pytest
import torch

from hbat.actors.experience import Experience
from hbat.orchestrator.advantages import compute_targets
from hbat.orchestrator.config import PPOConfig


def _exp(lengths, scores, group=None, logprobs=None, ref=None, eos=None, width=None) -> Experience:
    """Rows whose responses start at column 0 of the token fields and last ``lengths[i]`` tokens."""
    n, T = len(lengths), (width or max(lengths) + 1)
    mask = torch.zeros(n, T - 1, dtype=torch.long)
    for i, L in enumerate(lengths):
        mask[i, :L] = 1
    lp = torch.zeros(n, T - 1) if logprobs is None else logprobs
    return Experience(
        sequences=torch.zeros(n, T, dtype=torch.long), attention_mask=torch.ones(n, T, dtype=torch.long),
        action_mask=mask, prompt_index=torch.arange(n) // (group or 1),
        logprobs=lp, ref_logprobs=torch.zeros_like(lp) if ref is None else ref,
        scores=torch.tensor(scores, dtype=torch.float32), eos=eos,
    )


def test_grpo_keeps_signs_with_unequal_lengths():
    """The issue's example: lengths 40/4/4. Token-weighted batch whitening used to
    turn the best sample's +0.92 into a push-down; by default it is not applied."""
    scores = [1.0, 0.3, -0.8]
    cfg = PPOConfig(advantage="grpo", samples_per_prompt=3, kl_coef=0.0)
    exp, _ = compute_targets(_exp([40, 4, 4], scores, group=3), cfg, 3)
    s = torch.tensor(scores)
    expect = (s - s.mean()) / (s.std() + 1e-6)
    seq_adv = torch.stack([exp.advantages[i, :L].unique() for i, L in enumerate([40, 4, 4])]).squeeze(1)
    assert torch.allclose(seq_adv, expect, atol=1e-5)
    assert seq_adv[0] > 0 and seq_adv[2] < 0
    # explicit opt-in still whitens (and the long response then dominates the mean)
    forced, _ = compute_targets(_exp([40, 4, 4], scores, group=3),
                                PPOConfig(advantage="grpo", samples_per_prompt=3, kl_coef=0.0,
                                          normalize_advantages=True), 3)
    assert not torch.allclose(forced.advantages[0, 0], expect[0], atol=1e-3)


def test_equal_rewards_give_zero_advantage():
    """A group with no signal (all rewards equal) must not train, whatever its lengths."""
    for method in ("grpo", "rloo"):
        cfg = PPOConfig(advantage=method, samples_per_prompt=2, kl_coef=0.0)
        exp, _ = compute_targets(_exp([30, 2, 5, 5], [0.5, 0.5, 1.0, -1.0], group=2), cfg, 2)
        assert torch.all(exp.advantages[:2] == 0), method
        assert exp.advantages[2, 0] > 0 > exp.advantages[3, 0]


def test_dr_grpo_does_not_scale_by_std():
    cfg = PPOConfig(advantage="grpo", samples_per_prompt=2, kl_coef=0.0, group_std_scaling=False)
    exp, _ = compute_targets(_exp([3, 3], [2.0, 0.0], group=2), cfg, 2)
    assert exp.advantages[0, 0].item() == pytest.approx(1.0) and exp.advantages[1, 0].item() == pytest.approx(-1.0)


def test_rloo_leave_one_out():
    cfg = PPOConfig(advantage="rloo", samples_per_prompt=3, kl_coef=0.0)
    exp, _ = compute_targets(_exp([2, 2, 2], [3.0, 0.0, 0.0], group=3), cfg, 3)
    assert exp.advantages[:, 0].tolist() == pytest.approx([3.0, -1.5, -1.5])


def test_gae_whitens_by_default_and_kl_coef_reaches_token_rewards():
    """GAE: score at the last response token, -kl_coef * (logp - ref) at every token."""
    lp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.3, -0.7, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-0.3, -0.2, 0.0, 0.0]])
    for kl_coef in (0.05, 0.7):
        cfg = PPOConfig(advantage="gae", kl_coef=kl_coef, gamma=1.0, lam=1.0)
        exp = _exp([3, 2], [2.0, -1.0], logprobs=lp, ref=ref, width=5).with_fields(values=torch.zeros(2, 4))
        out, stats = compute_targets(exp, cfg, 1)
        expect = -kl_coef * (lp - ref) * exp.action_mask
        expect[0, 2] += 2.0
        expect[1, 1] += -1.0
        assert torch.allclose(out.token_rewards, expect, atol=1e-6), kl_coef
        assert stats["ppo/kl"] == pytest.approx(float(((lp - ref) * exp.action_mask).sum(1).mean()))
        # returns with gamma = lam = 1 and zero values: reward-to-go
        assert out.returns[0, 0].item() == pytest.approx(float(expect[0, :3].sum()), abs=1e-5)
        # whitened over the batch's response tokens
        m = exp.action_mask.bool()
        assert out.advantages[m].mean().item() == pytest.approx(0.0, abs=1e-5)


def test_grpo_kl_coef_enters_sequence_score():
    lp = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    ref = torch.tensor([[-2.0, -2.0], [-1.0, -1.0]])  # row 0 drifted by 2 nats
    cfg = PPOConfig(advantage="grpo", samples_per_prompt=2, kl_coef=0.5, group_std_scaling=False)
    out, _ = compute_targets(_exp([2, 2], [1.0, 1.0], group=2, logprobs=lp, ref=ref, width=3), cfg, 2)
    # sequence scores 1 - 0.5*2 = 0 and 1 - 0 = 1 -> centred -0.5, +0.5
    assert out.advantages[:, 0].tolist() == pytest.approx([-0.5, 0.5])


def test_missing_eos_penalty():
    eos = torch.tensor([True, False])
    cfg = PPOConfig(advantage="rloo", samples_per_prompt=2, kl_coef=0.0, missing_eos_penalty=1.0)
    out, stats = compute_targets(_exp([2, 4], [0.0, 0.0], group=2, eos=eos), cfg, 2)
    assert out.advantages[0, 0].item() == pytest.approx(1.0) and out.advantages[1, 0].item() == pytest.approx(-1.0)
    assert stats["ppo/truncated_frac"] == 0.5
    off, _ = compute_targets(_exp([2, 4], [0.0, 0.0], group=2, eos=eos),
                             PPOConfig(advantage="rloo", samples_per_prompt=2, kl_coef=0.0), 2)
    assert torch.all(off.advantages == 0)  # no penalty unless asked for
