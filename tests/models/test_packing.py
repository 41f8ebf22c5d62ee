"""Rows packed without padding (``models/packing.py``): the log-probs of the
scored tokens and every parameter gradient must equal the padded forward's;
the forward must really see fewer rows of real tokens; and it must step aside
where it does not apply."""

from __future__ import annotations

import pytest
import torch

from hbat.models import load_causal_lm
from hbat.models.packing import contiguous_rows, pack_rows, packing_plan
from hbat.models.scoring import response_token_logprobs


def _sft_batch():
    """5 right-padded rows of 3..14 real tokens in width 14; responses after a 2-token prompt."""
    g = torch.Generator().manual_seed(3)
    lengths = (14, 3, 9, 4, 6)
    ids = torch.zeros(len(lengths), 14, dtype=torch.long)
    att = torch.zeros_like(ids)
    loss = torch.zeros(len(lengths), 14)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, 90, (n,), generator=g)
        att[i, :n] = 1
        loss[i, 2:n] = 1.0
    return ids, att, loss[:, 1:]


def _ppo_batch():
    """Left-padded prompts (block of 6) and right-padded responses (block of 5)."""
    g = torch.Generator().manual_seed(4)
    ids = torch.zeros(4, 11, dtype=torch.long)
    att = torch.zeros_like(ids)
    action = torch.zeros(4, 10)
    for i, (p, r) in enumerate([(6, 5), (2, 1), (4, 3), (3, 5)]):
        ids[i, 6 - p:6 + r] = torch.randint(3, 90, (p + r,), generator=g)
        att[i, 6 - p:6 + r] = 1
        action[i, 5:5 + r] = 1.0
    return ids, att, action


def _run(model, ids, att, cols, packing):
    model.zero_grad(set_to_none=True)
    calls = []
    h = model.register_forward_pre_hook(lambda m, a, k: calls.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    lp, ent, s = response_token_logprobs(model, ids, att, cols, share_prefix=False, packing=packing, entropy=True)
    h.remove()
    (lp * cols).sum().backward()
    return lp.detach(), ent, s, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, calls


@pytest.mark.parametrize("batch,lora", [(_sft_batch, False), (_ppo_batch, False), (_sft_batch, True)])
def test_packed_logprobs_and_gradients_equal_the_padded_forward(tiny_checkpoint, batch, lora):
    from hbat.orchestrator.config import LoraConfig

    model = load_causal_lm(tiny_checkpoint, trainable=True, lora=LoraConfig(r=4, alpha=8) if lora else None)
    assert model.config._attn_implementation == "sdpa"
    ids, att, cols = batch()
    lp1, lg1, s1, g1, calls1 = _run(model, ids, att, cols, "auto")
    lp0, lg0, s0, g0, calls0 = _run(model, ids, att, cols, "off")
    assert calls0 == [tuple(ids.shape)]
    assert len(calls1) == 1 and calls1[0][0] < len(ids), calls1  # fewer rows: the real tokens only
    assert calls1[0][0] * calls1[0][1] < ids.numel()
    m = cols.bool()
    assert s0 == s1
    torch.testing.assert_close(lp1[m], lp0[m], rtol=0, atol=2e-5)
    assert float(lp1[~m].abs().sum()) == 0.0
    torch.testing.assert_close(lg1[m], lg0[m], rtol=0, atol=2e-5)  # entropies of the scored cells
    assert float(lg1[m].min()) > 0
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=2e-6, msg=n)
    assert any(float(g.abs().sum()) > 0 for g in g0.values())


def test_pack_rows_lays_real_tokens_end_to_end():
    ids, att, _ = _sft_batch()
    p = pack_rows(ids, att)
    assert p.input_ids.shape == (3, 14)  # 14 | 9+4 | 6+3
    flat = p.input_ids.flatten()
    for b in range(len(ids)):
        real = att[b].bool()
        assert torch.equal(flat[p.src[b, real]], ids[b, real])
        assert bool((p.src[b, ~real] == -1).all())
        # positions restart at 0 for every row
        assert p.position_ids.flatten()[p.src[b, real]].tolist() == list(range(int(real.sum())))


def test_packing_steps_aside_where_it_does_not_apply(tiny_checkpoint):
    model = load_causal_lm(tiny_checkpoint, trainable=True)
    ids, att, cols = _sft_batch()
    assert packing_plan(model, att, "off") is None
    holes = att.clone()
    holes[0, 5] = 0
    assert not contiguous_rows(holes) and contiguous_rows(att)
    assert packing_plan(model, holes, "on") is None  # a hole would change token distances
    full = torch.ones_like(att)
    assert packing_plan(model, full, "auto") is None  # nothing to save: no padding
    assert packing_plan(model, full, "on") == ids.shape[1]
    long_rows = torch.ones_like(att)
    long_rows[:, 10:] = 0  # padding, though no two rows share a bin: still packed (measured faster)
    assert packing_plan(model, long_rows, "auto") == ids.shape[1]
    model.config._attn_implementation = "some_custom_kernel"
    assert packing_plan(model, att, "on") is None


@pytest.mark.parametrize("path", ["plain", "packed", "shared"])
def test_only_scored_cells_are_projected_through_the_vocabulary(tiny_checkpoint, path, monkeypatch):
    """Every path hands the output projection the scored cells' hidden states only
    (the shared path: plus each distinct prefix's last position); an older
    transformers without mask support in ``logits_to_keep`` gets the same numbers."""
    import hbat.models.scoring as scoring
    from tests.models.test_shared_prefix import _ppo_batch as grouped_batch

    model = load_causal_lm(tiny_checkpoint, trainable=True)
    ids, att, cols = grouped_batch() if path == "shared" else _sft_batch()
    rows = []
    model.lm_head.register_forward_hook(lambda m, a, out: rows.append(a[0].reshape(-1, a[0].shape[-1]).shape[0]))
    kw = dict(share_prefix=path == "shared", packing="on" if path == "packed" else "off")
    lp, _, s = response_token_logprobs(model, ids, att, cols, **kw)
    n = int(cols.sum())
    if path == "shared":
        assert rows == [3, int(cols[:, s + 1:].sum())]  # 3 distinct prompts' last positions, then the tails
    else:
        assert rows == [n]
    monkeypatch.setattr(scoring, "_keep_takes_a_mask", lambda: False)
    rows.clear()
    old, _, _ = response_token_logprobs(model, ids, att, cols, **kw)
    assert rows[-1] > (int(cols[:, s + 1:].sum()) if path == "shared" else n)  # whole columns kept
    torch.testing.assert_close(old, lp, rtol=0, atol=1e-6)
