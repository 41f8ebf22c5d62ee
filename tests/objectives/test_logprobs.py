"""token_logprobs / sequence_logprobs / entropy / sft_loss against explicit loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from hbat.objectives.logprobs import entropy_from_logits, sequence_logprobs, token_logprobs
from hbat.objectives.sft import sft_loss

B, T, V = 3, 6, 5


def _data(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=dtype) * 2
    ids = torch.randint(0, V, (B, T), generator=g)
    # row 0: right padding, row 1: left padding, row 2: no response at all
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    return logits, ids, loss_mask


def _ref_token_logprob(logits, ids, b, t):
    """log p(ids[b, t+1] | prefix) with math only."""
    z = [float(v) for v in logits[b, t]]
    lse = math.log(sum(math.exp(v) for v in z))
    return z[int(ids[b, t + 1])] - lse


def test_token_logprobs_shift_and_values():
    logits, ids, _ = _data()
    lp = token_logprobs(logits, ids)
    assert lp.shape == (B, T - 1) and lp.dtype == torch.float32
    for b in range(B):
        for t in range(T - 1):
            assert lp[b, t].item() == pytest.approx(_ref_token_logprob(logits, ids, b, t), abs=1e-5)


def test_token_logprobs_bf16_is_computed_in_fp32():
    logits, ids, _ = _data(1, torch.float32)
    lp16 = token_logprobs(logits.bfloat16(), ids)
    assert lp16.dtype == torch.float32
    ref = token_logprobs(logits.bfloat16().float(), ids)
    assert torch.allclose(lp16, ref, atol=1e-6)


def test_token_logprobs_banned_tokens_and_bad_shapes():
    logits, ids, _ = _data(2, torch.float32)
    logits[:, :, 0] = float("-inf")
    ids = ids.clamp_min(1)
    lp = token_logprobs(logits, ids)
    assert torch.isfinite(lp).all()
    with pytest.raises(ValueError):
        token_logprobs(logits[:, :-1], ids)


def test_sequence_logprobs_sum_and_average_with_padding():
    logits, ids, loss_mask = _data(3)
    s = sequence_logprobs(logits, ids, loss_mask)
    a = sequence_logprobs(logits, ids, loss_mask, average=True)
    for b in range(B):
        terms = [_ref_token_logprob(logits, ids, b, t) for t in range(T - 1) if loss_mask[b, t + 1]]
        assert s[b].item() == pytest.approx(sum(terms), abs=1e-5)
        assert a[b].item() == pytest.approx(sum(terms) / len(terms) if terms else 0.0, abs=1e-5)
    assert s[2].item() == 0.0 and a[2].item() == 0.0


def test_sequence_logprobs_gradcheck():
    logits, ids, loss_mask = _data(4)
    logits.requires_grad_(True)
    # token_logprobs returns fp32, so gradcheck the float64 formula via a custom tolerance
    f = lambda z: sequence_logprobs(z, ids, loss_mask).double()
    assert torch.autograd.gradcheck(f, (logits,), eps=1e-3, atol=1e-3, rtol=1e-3)


def test_entropy_matches_loop_and_limits():
    logits, _, _ = _data(5)
    H = entropy_from_logits(logits)
    assert H.shape == (B, T)
    for b in range(B):
        for t in range(T):
            z = [float(v) for v in logits[b, t]]
            zs = sum(math.exp(v) for v in z)
            p = [math.exp(v) / zs for v in z]
            assert H[b, t].item() == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-5)
    assert torch.allclose(entropy_from_logits(torch.zeros(1, 2, V)), torch.full((1, 2), math.log(V)))
    peaked = torch.zeros(1, 1, V)
    peaked[..., 0] = 100.0
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)
    banned = torch.zeros(1, 1, V, requires_grad=True)
    z = banned.clone()
    z.data[..., :2] = float("-inf")
    h = entropy_from_logits(z)
    assert h.item() == pytest.approx(math.log(V - 2), abs=1e-6)
    h.sum().backward()
    assert torch.isfinite(banned.grad).all()


def test_sft_loss_matches_loop_and_hf_cross_entropy():
    logits, ids, loss_mask = _data(6)
    loss = sft_loss(logits, ids, loss_mask)
    terms = [
        -_ref_token_logprob(logits, ids, b, t) for b in range(B) for t in range(T - 1) if loss_mask[b, t + 1]
    ]
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    # HF convention: labels = ids with -100 outside the response, shifted inside the loss
    labels = ids.masked_fill(loss_mask == 0, -100)
    hf = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert loss.item() == pytest.approx(hf.item(), abs=1e-5)


def test_sft_loss_all_masked_and_grad():
    logits, ids, loss_mask = _data(7)
    logits.requires_grad_(True)
    zero = sft_loss(logits, ids, torch.zeros_like(loss_mask))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    logits.grad = None
    sft_loss(logits, ids, loss_mask).backward()
    # gradient of mean NLL w.r.t. the logits at a response position: (softmax - onehot) / n_tokens
    n = int(loss_mask[:, 1:].sum())
    b, t = 1, 3  # predicts ids[1, 4], which is a response token
    p = torch.softmax(logits.detach()[b, t], -1)
    expect = (p - F.one_hot(ids[b, t + 1], V)) / n
    assert torch.allclose(logits.grad[b, t], expect.to(logits.grad.dtype), atol=1e-6)
    assert logits.grad[2].abs().sum() == 0  # the row without response gets no gradient
    assert logits.grad[:, -1].abs().sum() == 0  # last position predicts nothing
