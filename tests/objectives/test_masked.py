"""masked_sum / masked_mean / masked_var / masked_whiten against python loops."""

import math
import statistics

import pytest
import torch

from hbat.objectives.masked import masked_mean, masked_sum, masked_var, masked_whiten


def _rand(seed=0, shape=(3, 7)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    mask = (torch.rand(shape, generator=g) > 0.4).to(torch.float64)
    mask[0, :] = 0  # an all-masked row
    mask[1, 0] = 1
    return x, mask


def _masked_values(x, mask):
    return [float(v) for v, m in zip(x.flatten().tolist(), mask.flatten().tolist()) if m]


def test_masked_sum_and_mean_match_loops():
    x, mask = _rand()
    vals = _masked_values(x, mask)
    assert masked_sum(x, mask).item() == pytest.approx(sum(vals))
    assert masked_mean(x, mask).item() == pytest.approx(sum(vals) / len(vals))
    for dim in (0, 1, -1):
        got_s = masked_sum(x, mask, dim=dim)
        got_m = masked_mean(x, mask, dim=dim)
        xs, ms = (x, mask) if dim != 0 else (x.T, mask.T)
        for i in range(xs.shape[0]):
            row = [float(v) for v, m in zip(xs[i].tolist(), ms[i].tolist()) if m]
            assert got_s[i].item() == pytest.approx(sum(row))
            assert got_m[i].item() == pytest.approx(sum(row) / len(row) if row else 0.0)


def test_bool_mask_and_broadcast():
    x, mask = _rand(1)
    assert torch.allclose(masked_mean(x, mask.bool()), masked_mean(x, mask))
    col = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64).unsqueeze(1)  # [3,1] broadcast over T
    expect = (x[0].sum() + x[2].sum()) / (2 * x.shape[1])
    assert masked_mean(x, col).item() == pytest.approx(expect.item())


def test_nonfinite_values_at_masked_positions_do_not_leak():
    x = torch.tensor([[1.0, float("-inf"), 2.0], [float("nan"), 3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]])
    s = masked_sum(x, mask)
    m = masked_mean(x, mask)
    assert s.item() == pytest.approx(10.0)
    assert m.item() == pytest.approx(2.5)
    (s + m).backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, 1] == 0 and x.grad[1, 0] == 0
    assert x.grad[0, 0].item() == pytest.approx(1 + 1 / 4)


def test_all_masked_gives_zero_and_zero_grad():
    x = torch.randn(2, 4, requires_grad=True)
    mask = torch.zeros(2, 4)
    m = masked_mean(x, mask)
    assert m.item() == 0.0
    assert masked_mean(x, mask, dim=1).tolist() == [0.0, 0.0]
    assert masked_var(x, mask).item() == 0.0
    assert masked_whiten(x, mask).abs().sum().item() == 0.0
    m.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


def test_masked_var_matches_statistics():
    x, mask = _rand(2)
    vals = _masked_values(x, mask)
    assert masked_var(x, mask).item() == pytest.approx(statistics.variance(vals))
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(statistics.pvariance(vals))
    one = torch.zeros_like(mask)
    one[2, 3] = 1
    assert masked_var(x, one).item() == 0.0  # n = 1: defined as 0, not NaN/inf


def test_masked_whiten():
    x, mask = _rand(3)
    x = x * 5 + 3
    w = masked_whiten(x, mask)
    vals = _masked_values(w, mask)
    assert statistics.fmean(vals) == pytest.approx(0.0, abs=1e-9)
    assert statistics.variance(vals) == pytest.approx(1.0, rel=1e-6)
    assert (w[mask == 0] == 0).all()
    # shift_mean=False keeps the mean, rescales the spread
    raw = _masked_values(x, mask)
    mu, sd = statistics.fmean(raw), statistics.stdev(raw)
    w2 = masked_whiten(x, mask, shift_mean=False)
    for v, r in zip(_masked_values(w2, mask), raw):
        assert v == pytest.approx(mu + (r - mu) / math.sqrt(sd**2 + 1e-8))


def test_gradcheck_masked_mean_and_whiten():
    x, mask = _rand(4)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: masked_mean(t, mask), (x,))
    assert torch.autograd.gradcheck(lambda t: masked_whiten(t, mask), (x,))
