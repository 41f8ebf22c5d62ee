"""Bradley-Terry loss and the k1/k2/k3 KL estimators."""

import math

import pytest
import torch

from hbat.objectives.kl import kl_estimate
from hbat.objectives.reward_model import bradley_terry_loss


def _logsig(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def test_bradley_terry_closed_form():
    rc = torch.tensor([0.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    rr = torch.tensor([0.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    loss, acc = bradley_terry_loss(rc, rr)
    expect = -sum(_logsig(c - r) for c, r in zip(rc.tolist(), rr.tolist())) / 4
    assert loss.item() == pytest.approx(expect)
    assert acc.item() == pytest.approx(0.25)  # only pair 1; ties count as wrong
    equal, _ = bradley_terry_loss(torch.zeros(3), torch.zeros(3))
    assert equal.item() == pytest.approx(math.log(2))


def test_bradley_terry_margin_sign_and_grad():
    rc = torch.tensor([1.0, 0.3], dtype=torch.float64, requires_grad=True)
    rr = torch.tensor([0.0, 0.4], dtype=torch.float64)
    margin = torch.tensor([0.5, 2.0], dtype=torch.float64)
    loss, _ = bradley_terry_loss(rc, rr, margin)
    d = [1.0 - 0.5, 0.3 - 0.4 - 2.0]  # margin is subtracted (TRL convention)
    assert loss.item() == pytest.approx(-sum(_logsig(x) for x in d) / 2)
    loss.backward()
    for i, x in enumerate(d):  # d/drc of -logsig(d)/B = -(1 - sigmoid(d)) / B
        assert rc.grad[i].item() == pytest.approx(-(1 - 1 / (1 + math.exp(-x))) / 2)
    with pytest.raises(ValueError):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_kl_estimator_formulas():
    logp = torch.tensor([-1.0, -0.2, -3.0], dtype=torch.float64)
    ref = torch.tensor([-1.5, -0.1, -3.0], dtype=torch.float64)
    k1 = kl_estimate(logp, ref, "k1")
    k2 = kl_estimate(logp, ref, "k2")
    k3 = kl_estimate(logp, ref, "k3")
    for i in range(3):
        d = ref[i].item() - logp[i].item()
        assert k1[i].item() == pytest.approx(-d)
        assert k2[i].item() == pytest.approx(0.5 * d * d)
        assert k3[i].item() == pytest.approx(math.exp(d) - d - 1)
    assert k1[2].item() == 0 and k2[2].item() == 0 and k3[2].item() == 0
    assert torch.equal(kl_estimate(logp, ref), k1)  # default is k1
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(logp, ref, "k4")


def test_k2_k3_nonnegative_k1_can_be_negative():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(1000, generator=g, dtype=torch.float64) * 3
    ref = torch.randn(1000, generator=g, dtype=torch.float64) * 3
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert (kl_estimate(logp, ref, "k2") >= 0).all()
    assert (kl_estimate(logp, ref, "k1") < 0).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k1_and_k3_are_unbiased_by_exact_enumeration(seed):
    """E_{y~q}[k(y)] over all outcomes equals KL(q||p) computed from the definition."""
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    kl = sum(qi * math.log(qi / pi) for qi, pi in zip(q.tolist(), p.tolist()))
    logq, logp = q.log(), p.log()
    for est in ("k1", "k3"):
        expect = (q * kl_estimate(logq, logp, est)).sum().item()
        assert expect == pytest.approx(kl, rel=1e-10)
    # k2 is biased in general but agrees to second order for nearby distributions
    p_near = torch.softmax(logq + 0.01 * torch.randn(6, generator=g, dtype=torch.float64), 0)
    kl_near = sum(qi * math.log(qi / pi) for qi, pi in zip(q.tolist(), p_near.tolist()))
    k2 = (q * kl_estimate(logq, p_near.log(), "k2")).sum().item()
    assert k2 == pytest.approx(kl_near, rel=0.05)
    biased = (q * kl_estimate(logq, logp, "k2")).sum().item()
    assert abs(biased - kl) > 1e-4


def test_kl_gradcheck():
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(5, generator=g, dtype=torch.float64)
    for est in ("k1", "k2", "k3"):
        assert torch.autograd.gradcheck(lambda x: kl_estimate(x, ref, est), (logp,))
