"""A prefix several rows share runs once (``models/shared_prefix.py``): the
log-probs, the entropies and every parameter gradient must equal the plain
forward's; it must actually run the prefix once per distinct prefix; and it
must step aside (plain forward) where it does not apply."""

from __future__ import annotations

import pytest
import torch

from hbat.models import load_causal_lm
from hbat.models.scoring import response_token_logprobs


def _ppo_batch(pad: int = 0):
    """3 prompts x 2 samples: left-padded prompt block (width 6) + right-padded responses (width 5)."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 90, (n,), generator=g) for n in (6, 4, 5)]
    rows, masks = [], []
    for p in prompts:
        for r_len in (5, 3):
            resp = torch.randint(3, 90, (r_len,), generator=g)
            ids = torch.full((11,), pad)
            m = torch.zeros(11, dtype=torch.long)
            ids[6 - len(p):6], m[6 - len(p):6] = p, 1
            ids[6:6 + r_len], m[6:6 + r_len] = resp, 1
            rows.append(ids)
            masks.append(m)
    ids, att = torch.stack(rows), torch.stack(masks)
    action = torch.zeros(6, 10)
    for i in range(6):
        action[i, 5:5 + int(att[i, 6:].sum())] = 1.0
    return ids, att, action


def _dpo_batch():
    """2 pairs, right-padded: chosen rows then rejected rows, prompts of 5 and 3 tokens."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 90, (n,), generator=g) for n in (5, 3)]
    rows, masks, loss = [], [], []
    for kind in range(2):
        for p in prompts:
            resp = torch.randint(3, 90, (4 + kind,), generator=g)
            seq = torch.cat([p, resp])
            ids = torch.zeros(10, dtype=torch.long)
            ids[:len(seq)] = seq
            m = torch.zeros(10, dtype=torch.long)
            m[:len(seq)] = 1
            lm = torch.zeros(10)
            lm[len(p):len(seq)] = 1.0
            rows.append(ids), masks.append(m), loss.append(lm)
    return torch.stack(rows), torch.stack(masks), torch.stack(loss)[:, 1:]


def _forward_rows(model) -> list[tuple[int, int]]:
    """``(rows, positions)`` of each forward (token ids or, from the shared path, their embeddings)."""
    rows = []

    def record(m, a, k):
        x = k.get("input_ids")
        rows.append((x if x is not None else k["inputs_embeds"]).shape[:2])

    model.register_forward_pre_hook(record, with_kwargs=True)
    return rows


def _logps_and_grads(model, ids, att, cols, share: bool):
    model.zero_grad(set_to_none=True)
    lp, ent, s = response_token_logprobs(model, ids, att, cols, share_prefix=share, entropy=True)
    (lp * cols).sum().backward()
    return lp.detach(), ent, s, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("batch", [_ppo_batch, _dpo_batch])
def test_shared_prefix_equals_the_plain_forward_with_gradients(tiny_checkpoint, batch):
    model = load_causal_lm(tiny_checkpoint, trainable=True)
    ids, att, cols = batch()
    shapes = _forward_rows(model)
    lookups = []
    model.get_input_embeddings().register_forward_hook(lambda m, a, out: lookups.append(out.shape))
    lp1, lg1, s1, g1 = _logps_and_grads(model, ids, att, cols, share=True)
    shared_calls = list(shapes)
    # prefix and tail tokens embedded in one lookup: one vocabulary-sized gradient to zero, not two
    assert len(lookups) == 1
    shapes.clear()
    lp0, lg0, s0, g0 = _logps_and_grads(model, ids, att, cols, share=False)
    assert [tuple(x) for x in shapes] == [tuple(ids.shape)]  # the plain path: one forward of every row
    distinct = 3 if batch is _ppo_batch else 2
    assert tuple(shared_calls[0]) == (distinct, s1 + 1) and tuple(shared_calls[1]) == (len(ids), ids.shape[1] - s1 - 1)
    assert s0 == s1
    torch.testing.assert_close(lp1, lp0, rtol=0, atol=1e-5)
    torch.testing.assert_close(lg1, lg0, rtol=0, atol=1e-5)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)
    assert any(float(g.abs().sum()) > 0 for g in g0.values())


def test_distinct_prefixes_or_checkpointing_take_the_plain_forward(tiny_checkpoint):
    ids, att, cols = _ppo_batch()
    model = load_causal_lm(tiny_checkpoint, trainable=True)
    shapes = _forward_rows(model)
    response_token_logprobs(model, ids[::2], att[::2], cols[::2])  # one sample per prompt: nothing shared
    assert [tuple(x) for x in shapes] == [(3, ids.shape[1])]
    model = load_causal_lm(tiny_checkpoint, trainable=True, gradient_checkpointing=True)
    shapes = _forward_rows(model)
    response_token_logprobs(model, ids, att, cols)
    assert [tuple(x) for x in shapes] == [tuple(ids.shape)]


def test_critic_values_with_a_shared_prefix_equal_the_plain_forward(tiny_checkpoint):
    from hbat.models import critic_values, load_critic

    model = load_critic(tiny_checkpoint, trainable=True)
    ids, att, cols = _ppo_batch()
    backbone_rows = []
    model.model.register_forward_pre_hook(
        lambda m, a, k: backbone_rows.append(next(x for x in (k.get("input_ids"), k.get("inputs_embeds"), *a)
                                                  if x is not None).shape[0]),
        with_kwargs=True)
    out = {}
    for prefix in (6, 0):
        model.zero_grad(set_to_none=True)
        v = critic_values(model, ids, att, prefix)
        (v * cols).sum().backward()
        out[prefix] = (v.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert backbone_rows == [3, 6, 6]  # shared: the 3 prompts once, then every row's tail; plain: every row
    torch.testing.assert_close(out[6][0], out[0][0], rtol=0, atol=1e-5)
    assert out[6][1].keys() == out[0][1].keys()
    for n, g in out[0][1].items():
        torch.testing.assert_close(out[6][1][n], g, rtol=1e-4, atol=1e-6, msg=n)
