"""DPO / cDPO / IPO / SLiC-HF, point-wise DPO / ULMA and the registry."""

import math

import pytest
import torch
import torch.nn.functional as F

from hbat.objectives.pointwise import pointwise_dpo_loss, ulma_loss
from hbat.objectives.preference import dpo_loss, ipo_loss, slic_loss
from hbat.objectives.registry import PREFERENCE_LOSSES, LossSpec, get_preference_loss


def _logsig(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _pairs(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    return [(-20 + 5 * torch.randn(n, generator=g, dtype=torch.float64)).requires_grad_(i < 2) for i in range(4)]


# ---------------------------------------------------------------- DPO / cDPO
@pytest.mark.parametrize("beta,ls", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.1), (1.0, 0.3)])
def test_dpo_matches_formula_and_gradient(beta, ls):
    pc, pr, rc, rr = _pairs(1)
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=ls)
    n = pc.shape[0]
    hs = [(pc[i] - rc[i] - (pr[i] - rr[i])).item() for i in range(n)]
    expect = sum(-(1 - ls) * _logsig(beta * h) - ls * _logsig(-beta * h) for h in hs) / n
    assert loss.item() == pytest.approx(expect)
    loss.backward()
    for i, h in enumerate(hs):  # dL/dh = beta * (sigmoid(beta h) - (1 - ls)) / n ; dh/dpc = 1, dh/dpr = -1
        g = beta * (_sig(beta * h) - (1 - ls)) / n
        assert pc.grad[i].item() == pytest.approx(g)
        assert pr.grad[i].item() == pytest.approx(-g)
    cr = [beta * (pc[i] - rc[i]).item() for i in range(n)]
    rj = [beta * (pr[i] - rr[i]).item() for i in range(n)]
    assert stats["chosen_reward"].item() == pytest.approx(sum(cr) / n)
    assert stats["rejected_reward"].item() == pytest.approx(sum(rj) / n)
    assert stats["margin"].item() == pytest.approx(sum(a - b for a, b in zip(cr, rj)) / n)
    assert stats["reward_accuracy"].item() == pytest.approx(sum(a > b for a, b in zip(cr, rj)) / n)


def test_dpo_closed_forms():
    z = torch.zeros(3)
    assert dpo_loss(z, z, z, z)[0].item() == pytest.approx(math.log(2))
    # chosen preferred by the policy -> loss below log 2; reversed -> above
    up = torch.full((3,), 1.0)
    assert dpo_loss(up, z, z, z, beta=1.0)[0].item() == pytest.approx(-_logsig(1.0))
    assert dpo_loss(z, up, z, z, beta=1.0)[0].item() == pytest.approx(-_logsig(-1.0))
    # cDPO is minimised at sigmoid(beta h) = 1 - eps, not at h -> infinity
    eps, beta = 0.1, 0.5
    h_star = math.log((1 - eps) / eps) / beta
    h = torch.tensor([h_star], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    dpo_loss(h, zero, zero, zero, beta=beta, label_smoothing=eps)[0].backward()
    assert h.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_dpo_gradcheck():
    pc, pr, rc, rr = _pairs(2)
    f = lambda a, b: dpo_loss(a, b, rc, rr, beta=0.2, label_smoothing=0.1)[0]
    assert torch.autograd.gradcheck(f, (pc, pr))


# ---------------------------------------------------------------- IPO
def test_ipo_matches_formula_and_minimum():
    pc, pr, rc, rr = _pairs(3)
    beta = 0.25
    loss, stats = ipo_loss(pc, pr, rc, rr, beta=beta)
    hs = [(pc[i] - rc[i] - pr[i] + rr[i]).item() for i in range(pc.shape[0])]
    assert loss.item() == pytest.approx(sum((h - 1 / (2 * beta)) ** 2 for h in hs) / len(hs))
    assert set(stats) >= {"chosen_reward", "rejected_reward", "reward_accuracy", "margin"}
    target = torch.full((2,), 1 / (2 * beta), dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    assert ipo_loss(target, zero, zero, zero, beta=beta)[0].item() == pytest.approx(0.0)
    assert torch.autograd.gradcheck(lambda a, b: ipo_loss(a, b, rc, rr, beta=beta)[0], (pc, pr))


# ---------------------------------------------------------------- SLiC-HF
def test_slic_hinge_and_regulariser():
    pc = torch.tensor([-10.0, -10.0, -4.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-12.0, -10.5, -3.0], dtype=torch.float64, requires_grad=True)
    rc = torch.zeros(3, dtype=torch.float64)
    rr = torch.zeros(3, dtype=torch.float64)
    loss, stats = slic_loss(pc, pr, rc, rr, beta=1.0, delta=1.0, reg_weight=0.5)
    hinge = [max(0.0, 1.0 - (c - r)) for c, r in zip(pc.tolist(), pr.tolist())]  # [0, 0.5, 2]
    assert hinge == [0.0, 0.5, 2.0]
    expect = sum(h + 0.5 * (-c) for h, c in zip(hinge, pc.tolist())) / 3
    assert loss.item() == pytest.approx(expect)
    loss.backward()
    # d/dpc: -1[hinge active]/3 - 0.5/3 ; d/dpr: +1[hinge active]/3
    assert pc.grad.tolist() == pytest.approx([-0.5 / 3, -1.5 / 3, -1.5 / 3])
    assert pr.grad.tolist() == pytest.approx([0.0, 1 / 3, 1 / 3])
    assert stats["hinge"].item() == pytest.approx(2.5 / 3)
    assert stats["logp_accuracy"].item() == pytest.approx(2 / 3)


def test_slic_beta_chosen_nll_and_unused_reference():
    pc, pr, rc, rr = _pairs(4)
    nll = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    loss, _ = slic_loss(pc, pr, rc, rr, beta=0.5, delta=2.0, reg_weight=0.1, chosen_nll=nll)
    expect = sum(max(0.0, 2.0 - 0.5 * (c - r)) + 0.1 * n for c, r, n in zip(pc.tolist(), pr.tolist(), nll.tolist()))
    assert loss.item() == pytest.approx(expect / 5)
    other, _ = slic_loss(pc, pr, rc + 7.0, rr - 3.0, beta=0.5, delta=2.0, reg_weight=0.1, chosen_nll=nll)
    assert other.item() == loss.item()


# ---------------------------------------------------------------- point-wise DPO / ULMA
def test_pointwise_dpo_binary_and_continuous():
    g = torch.Generator().manual_seed(5)
    pol = (-15 + 3 * torch.randn(6, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref = -15 + 3 * torch.randn(6, generator=g, dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.3, 0.8], dtype=torch.float64)
    beta = 0.2
    loss, stats = pointwise_dpo_loss(pol, ref, labels, beta=beta)
    rs = [(p - q) for p, q in zip(pol.tolist(), ref.tolist())]
    expect = -sum(z * _logsig(beta * r) + (1 - z) * _logsig(-beta * r) for z, r in zip(labels.tolist(), rs)) / 6
    assert loss.item() == pytest.approx(expect)
    bce = F.binary_cross_entropy_with_logits(beta * (pol - ref), labels)  # independent reference
    assert loss.item() == pytest.approx(bce.item())
    loss.backward()
    for i, (z, r) in enumerate(zip(labels.tolist(), rs)):
        assert pol.grad[i].item() == pytest.approx(beta * (_sig(beta * r) - z) / 6)
    acc = sum((r > 0) == (z >= 0.5) for z, r in zip(labels.tolist(), rs)) / 6
    assert stats["accuracy"].item() == pytest.approx(acc)
    assert torch.autograd.gradcheck(lambda p: pointwise_dpo_loss(p, ref, labels, beta)[0], (pol,))


def _ulma_data():
    g = torch.Generator().manual_seed(6)
    pol = (-30 + 5 * torch.randn(4, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref = (-30 + 5 * torch.randn(4, generator=g, dtype=torch.float64)).requires_grad_(True)
    return pol, ref


def test_ulma_binary_labels_split_sft_and_negative_terms():
    pol, ref = _ulma_data()
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    beta = 0.1
    loss, stats = ulma_loss(pol, ref, labels, beta=beta)
    terms = []
    for p, q, z in zip(pol.tolist(), ref.tolist(), labels.tolist()):
        terms.append(-p if z == 1 else -_logsig(-beta * (p - q)))
    assert loss.item() == pytest.approx(sum(terms) / 4)
    loss.backward()
    # positives: pure SFT -> gradient -1/B, no dependence on the reference
    assert pol.grad[0].item() == pytest.approx(-0.25) and pol.grad[2].item() == pytest.approx(-0.25)
    assert ref.grad[0].item() == 0.0 and ref.grad[2].item() == 0.0
    # negatives: d/dp of -logsig(-beta r)/B = beta * sigmoid(beta r) / B
    for i in (1, 3):
        r = pol[i].item() - ref[i].item()
        assert pol.grad[i].item() == pytest.approx(beta * _sig(beta * r) / 4)
    assert stats["positive_nll"].item() == pytest.approx((terms[0] + terms[2]) / 2)
    assert stats["negative_loss"].item() == pytest.approx((terms[1] + terms[3]) / 2)
    assert stats["positive_fraction"].item() == 0.5


def test_ulma_continuous_threshold_length_norm_and_override():
    pol, ref = _ulma_data()
    beta = 0.3
    labels = torch.tensor([0.9, 0.2, 0.5, 0.0], dtype=torch.float64)
    ntok = torch.tensor([10, 3, 0, 4])
    neg = [-_logsig(-beta * (p - q)) for p, q in zip(pol.tolist(), ref.tolist())]
    nll = [-p / max(n, 1) for p, n in zip(pol.tolist(), ntok.tolist())]
    got, _ = ulma_loss(pol, ref, labels, beta=beta, num_tokens=ntok)
    expect = sum(z * a + (1 - z) * b for z, a, b in zip(labels.tolist(), nll, neg)) / 4
    assert got.item() == pytest.approx(expect)
    thr, _ = ulma_loss(pol, ref, labels, beta=beta, num_tokens=ntok, label_mode="threshold")
    zs = [1.0, 0.0, 1.0, 0.0]
    assert thr.item() == pytest.approx(sum(z * a + (1 - z) * b for z, a, b in zip(zs, nll, neg)) / 4)
    given = torch.tensor([1.5, 2.5, 3.5, 4.5], dtype=torch.float64)
    ov, _ = ulma_loss(pol, ref, labels, beta=beta, positive_nll=given)
    assert ov.item() == pytest.approx(sum(z * a + (1 - z) * b for z, a, b in zip(labels.tolist(), given.tolist(), neg)) / 4)
    with pytest.raises(ValueError, match="not both"):
        ulma_loss(pol, ref, labels, positive_nll=given, num_tokens=ntok)
    with pytest.raises(ValueError, match="weight, threshold"):
        ulma_loss(pol, ref, labels, label_mode="soft")
    only_neg, stats = ulma_loss(pol, ref, torch.zeros(4, dtype=torch.float64), beta=beta)
    assert stats["positive_nll"].item() == 0.0 and torch.isfinite(only_neg)


def test_ulma_negative_half_equals_pointwise_dpo():
    pol, ref = _ulma_data()
    zeros = torch.zeros(4, dtype=torch.float64)
    a, _ = ulma_loss(pol, ref, zeros, beta=0.2)
    b, _ = pointwise_dpo_loss(pol, ref, zeros, beta=0.2)
    assert a.item() == pytest.approx(b.item())


# ---------------------------------------------------------------- registry
def test_registry_names_kinds_and_defaults():
    assert set(PREFERENCE_LOSSES) == {"dpo", "ipo", "cdpo", "slic", "pointwise_dpo", "ulma"}
    kinds = {n: s.kind for n, s in PREFERENCE_LOSSES.items()}
    assert kinds == {
        "dpo": "pairwise", "ipo": "pairwise", "cdpo": "pairwise", "slic": "pairwise",
        "pointwise_dpo": "pointwise", "ulma": "pointwise",
    }
    assert get_preference_loss("cdpo").defaults["label_smoothing"] == 0.1
    assert get_preference_loss("dpo").defaults["label_smoothing"] == 0.0
    assert isinstance(get_preference_loss("DPO"), LossSpec)


def test_registry_call_uses_defaults_and_overrides():
    pc, pr, rc, rr = _pairs(7)
    spec = get_preference_loss("cdpo")
    assert spec(pc, pr, rc, rr)[0].item() == pytest.approx(dpo_loss(pc, pr, rc, rr, 0.1, 0.1)[0].item())
    assert spec(pc, pr, rc, rr, beta=0.3)[0].item() == pytest.approx(dpo_loss(pc, pr, rc, rr, 0.3, 0.1)[0].item())
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    for name in ("pointwise_dpo", "ulma"):
        loss, stats = get_preference_loss(name)(pc, rc, labels)
        assert loss.dim() == 0 and isinstance(stats, dict)
    for name in ("dpo", "ipo", "cdpo", "slic"):
        loss, stats = get_preference_loss(name)(pc, pr, rc, rr)
        assert loss.dim() == 0 and "reward_accuracy" in stats


def test_registry_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_preference_loss("kto")
    msg = str(err.value)
    assert "'kto'" in msg
    for name in ("dpo", "ipo", "cdpo", "slic", "pointwise_dpo", "ulma"):
        assert name in msg
