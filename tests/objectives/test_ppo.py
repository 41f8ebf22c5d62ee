"""PPO pieces against explicit per-token loops and closed forms."""

import math
import statistics

import pytest
import torch

from hbat.objectives.ppo import (
    gae_advantages,
    group_relative_advantages,
    kl_penalized_rewards,
    normalize_scores,
    ppo_policy_loss,
    ppo_value_loss,
)

# rows: right padding, left padding, a hole inside the response, no response at all
MASK = torch.tensor(
    [
        [0, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1],
        [1, 1, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ]
)
B, T1 = MASK.shape


def _rand(seed, *shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- KL-shaped reward
@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_penalized_rewards_layout(est):
    logp, ref = _rand(0, B, T1), _rand(1, B, T1)
    scores = torch.tensor([1.0, -2.0, 3.0, 5.0], dtype=torch.float64)
    out = kl_penalized_rewards(scores, logp, ref, MASK, kl_coef=0.05, estimator=est)
    for b in range(B):
        valid = [t for t in range(T1) if MASK[b, t]]
        for t in range(T1):
            d = ref[b, t].item() - logp[b, t].item()
            kl = {"k1": -d, "k2": 0.5 * d * d, "k3": math.exp(d) - d - 1}[est]
            expect = -0.05 * kl if MASK[b, t] else 0.0
            if valid and t == valid[-1]:
                expect += scores[b].item()
            assert out[b, t].item() == pytest.approx(expect)
    assert out[3].abs().sum() == 0  # no response: the score has nowhere to go


def test_kl_penalized_rewards_zero_coef_is_sparse_score():
    logp, ref = _rand(2, B, T1), _rand(3, B, T1)
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    out = kl_penalized_rewards(scores, logp, ref, MASK, kl_coef=0.0)
    assert out.sum(dim=1).tolist() == [1.0, 2.0, 3.0, 0.0]
    assert out[0, 3] == 1.0 and out[1, 5] == 2.0 and out[2, 4] == 3.0


def test_normalize_scores():
    s = torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64)
    assert torch.equal(normalize_scores(s), s)
    assert normalize_scores(s, clip=2.5).tolist() == [1.0, 2.0, 2.5, 2.5]
    w = normalize_scores(s, whiten=True)
    mu, sd = statistics.fmean(s.tolist()), statistics.stdev(s.tolist())
    for a, x in zip(w.tolist(), s.tolist()):
        assert a == pytest.approx((x - mu) / math.sqrt(sd**2 + 1e-8))
    wc = normalize_scores(s, clip=1.0, whiten=True)  # whiten first, then clip
    assert wc.tolist() == pytest.approx([max(-1.0, min(1.0, a)) for a in w.tolist()])
    assert normalize_scores(torch.tensor([7.0]), whiten=True).item() == 0.0


# ---------------------------------------------------------------- GAE
def _gae_reference(rewards, values, mask, gamma, lam):
    """Textbook non-recursive form on the compressed valid positions:
    A_i = sum_{l>=0} (gamma*lam)^l * delta_{i+l},  delta_j = r_j + gamma*V_{j+1} - V_j, V_{n} = 0."""
    B, T = rewards.shape
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        r = [rewards[b, t].item() for t in idx]
        v = [values[b, t].item() for t in idx] + [0.0]
        n = len(idx)
        delta = [r[j] + gamma * v[j + 1] - v[j] for j in range(n)]
        for i in range(n):
            adv[b][idx[i]] = sum((gamma * lam) ** l * delta[i + l] for l in range(n - i))
    return torch.tensor(adv, dtype=torch.float64)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0), (1.0, 1.0)])
def test_gae_matches_reference(gamma, lam):
    rewards, values = _rand(4, B, T1), _rand(5, B, T1)
    adv, ret = gae_advantages(rewards, values, MASK, gamma, lam)
    ref = _gae_reference(rewards, values, MASK, gamma, lam)
    assert torch.allclose(adv, ref, atol=1e-12)
    assert torch.allclose(ret, torch.where(MASK.bool(), ref + values, torch.zeros_like(ref)), atol=1e-12)
    assert (adv[MASK == 0] == 0).all() and (ret[MASK == 0] == 0).all()


def test_gae_ignores_values_and_rewards_outside_the_response():
    rewards, values = _rand(6, B, T1), _rand(7, B, T1)
    junk_r, junk_v = rewards.clone(), values.clone()
    junk_r[MASK == 0] = 123.0
    junk_v[MASK == 0] = -55.0
    a1, r1 = gae_advantages(rewards, values, MASK, 0.97, 0.9)
    a2, r2 = gae_advantages(junk_r, junk_v, MASK, 0.97, 0.9)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)


def test_gae_monte_carlo_limit_is_reward_to_go():
    rewards, values = _rand(8, B, T1), _rand(9, B, T1)
    _, ret = gae_advantages(rewards, values, MASK, 1.0, 1.0)
    for b in range(B):
        idx = [t for t in range(T1) if MASK[b, t]]
        for k, t in enumerate(idx):
            assert ret[b, t].item() == pytest.approx(sum(rewards[b, s].item() for s in idx[k:]))


def test_gae_is_not_differentiable_target():
    rewards, values = _rand(10, B, T1), _rand(11, B, T1).requires_grad_(True)
    adv, ret = gae_advantages(rewards, values, MASK, 1.0, 0.95)
    assert not adv.requires_grad and not ret.requires_grad


# ---------------------------------------------------------------- policy / value losses
def _policy_reference(logp, old, adv, mask, eps):
    num, den, clipped = 0.0, 0, 0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            r = math.exp(logp[b, t].item() - old[b, t].item())
            a = adv[b, t].item()
            rc = min(max(r, 1 - eps), 1 + eps)
            num += -min(r * a, rc * a)
            clipped += int(-rc * a > -r * a)
            den += 1
    return num / den, clipped / den


def test_ppo_policy_loss_matches_loop():
    old = _rand(12, B, T1)
    logp = old + 0.4 * _rand(13, B, T1)  # ratios both inside and outside [0.8, 1.2]
    adv = _rand(14, B, T1)
    logp[MASK == 0] = float("nan")  # garbage outside the response must not matter
    loss, stats = ppo_policy_loss(logp, old, adv, MASK, clip_eps=0.2)
    exp_loss, exp_clip = _policy_reference(logp, old, adv, MASK, 0.2)
    assert loss.item() == pytest.approx(exp_loss)
    assert stats["clipfrac"].item() == pytest.approx(exp_clip)
    assert 0 < exp_clip < 1
    d = [(logp[b, t] - old[b, t]).item() for b in range(B) for t in range(T1) if MASK[b, t]]
    assert stats["approx_kl"].item() == pytest.approx(0.5 * sum(x * x for x in d) / len(d))
    assert not stats["clipfrac"].requires_grad and stats["clipfrac"].dtype.is_floating_point


def test_ppo_policy_loss_gradient_is_zero_when_clipped():
    old = torch.zeros(1, 4, dtype=torch.float64)
    # ratios 1.0, 1.5, 0.5, 1.5 with advantages +1, +1, -1, -1
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.5]], dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    loss, stats = ppo_policy_loss(logp, old, adv, torch.ones(1, 4), clip_eps=0.2)
    loss.backward()
    # d/dlogp of -r*A/4 = -r*A/4 where the unclipped branch is active, else 0
    assert logp.grad.tolist()[0] == pytest.approx([-0.25, 0.0, 0.0, 1.5 / 4])
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx((-1.0 - 1.2 + 0.8 + 1.5) / 4)


def test_ppo_policy_loss_gradcheck_and_empty_mask():
    old, adv = _rand(15, B, T1), _rand(16, B, T1)
    logp = (old + 0.05 * _rand(17, B, T1)).requires_grad_(True)  # away from the kinks
    assert torch.autograd.gradcheck(lambda x: ppo_policy_loss(x, old, adv, MASK)[0], (logp,))
    loss, stats = ppo_policy_loss(logp, old, adv, torch.zeros_like(MASK))
    assert loss.item() == 0.0 and stats["clipfrac"].item() == 0.0
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))


def test_ppo_value_loss_matches_loop():
    old, ret = _rand(18, B, T1), _rand(19, B, T1)
    values = (old + 0.5 * _rand(20, B, T1)).requires_grad_(True)
    loss, clipfrac = ppo_value_loss(values, old, ret, MASK, clip_eps=0.2)
    num, den, nclip = 0.0, 0, 0
    for b in range(B):
        for t in range(T1):
            if MASK[b, t]:
                v, o, R = values[b, t].item(), old[b, t].item(), ret[b, t].item()
                vc = o + min(max(v - o, -0.2), 0.2)
                num += 0.5 * max((v - R) ** 2, (vc - R) ** 2)
                nclip += int((vc - R) ** 2 > (v - R) ** 2)
                den += 1
    assert loss.item() == pytest.approx(num / den)
    assert clipfrac.item() == pytest.approx(nclip / den)
    assert torch.autograd.gradcheck(lambda v: ppo_value_loss(v, old, ret, MASK)[0], (values,))


# ---------------------------------------------------------------- group baselines
def test_grpo_and_rloo_match_loops():
    s = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.0, 3.0, 3.0, 6.0], dtype=torch.float64)
    k = 4
    grpo = group_relative_advantages(s, k)
    plain = group_relative_advantages(s, k, scale_by_std=False)
    rloo = group_relative_advantages(s, k, method="rloo")
    for g in range(2):
        grp = s[g * k : (g + 1) * k].tolist()
        mu, sd = statistics.fmean(grp), statistics.stdev(grp)
        for i, x in enumerate(grp):
            j = g * k + i
            assert grpo[j].item() == pytest.approx((x - mu) / (sd + 1e-6))
            assert plain[j].item() == pytest.approx(x - mu)
            others = grp[:i] + grp[i + 1 :]
            assert rloo[j].item() == pytest.approx(x - sum(others) / (k - 1))
    assert torch.allclose(rloo, plain * k / (k - 1))  # known identity


def test_group_advantages_edge_cases():
    same = group_relative_advantages(torch.full((4,), 2.5), 2)
    assert torch.equal(same, torch.zeros(4))  # identical samples: no signal, no NaN
    one = group_relative_advantages(torch.tensor([1.0, 5.0]), 1)
    assert torch.equal(one, torch.zeros(2))
    with pytest.raises(ValueError, match="multiple"):
        group_relative_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="rloo"):
        group_relative_advantages(torch.zeros(4), 1, method="rloo")
    with pytest.raises(ValueError, match="grpo, rloo"):
        group_relative_advantages(torch.zeros(4), 2, method="ppo")
