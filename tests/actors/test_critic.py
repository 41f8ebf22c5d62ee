"""The critic's single pass: when a batch gets one critic step, the values
forward from scoring is kept and the step backpropagates through it. It must
be the same step as the two-forward path (same weights after it), run one
forward instead of two, and never reuse a forward made on other rows."""

from __future__ import annotations

import torch

from hbat.actors.critic import CriticWorker
from hbat.actors.experience import Experience


def _exp(seed: int = 0) -> Experience:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(5, 60, (4, 9), generator=g)
    att = torch.ones_like(seq)
    att[1, :2] = 0  # a left-padded row
    act = torch.zeros(4, 8)
    act[:, 4:] = 1.0
    return Experience(sequences=seq, attention_mask=att, action_mask=act, prompt_index=torch.arange(4))


def _critic(path) -> CriticWorker:
    c = CriticWorker(path, seed=0, torch_threads=1)
    c.configure({"lr": 1e-3}, total_steps=4)
    c.begin_phase()
    return c


def _forwards(c: CriticWorker) -> list:
    calls = []
    c.model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    return calls


def _step(c: CriticWorker, exp: Experience, keep_graph: bool) -> dict:
    v = c.values(exp, keep_graph=keep_graph)
    returns = torch.linspace(-1, 1, v.numel()).view_as(v) * exp.action_mask
    return c.train_step(exp.with_fields(values=v, returns=returns))


def test_kept_forward_gives_the_same_step_with_one_forward(tiny_checkpoint):
    a, b = _critic(tiny_checkpoint), _critic(tiny_checkpoint)
    before = {k: t.detach().clone() for k, t in a.model.state_dict().items()}
    na, nb = _forwards(a), _forwards(b)
    exp = _exp()
    sa, sb = _step(a, exp, keep_graph=True), _step(b, exp, keep_graph=False)
    assert (len(na), len(nb)) == (1, 2)
    assert (sa["critic/single_pass"], sb["critic/single_pass"]) == (1.0, 0.0)
    assert abs(sa["critic/value_loss"] - sb["critic/value_loss"]) < 1e-6
    moved = 0
    for k, t in a.model.state_dict().items():
        torch.testing.assert_close(t, b.model.state_dict()[k], rtol=0, atol=1e-6)
        moved += int(not torch.equal(t, before[k]))
    assert moved > 0  # the step changed the weights


def test_kept_forward_is_not_used_for_other_rows(tiny_checkpoint):
    c = _critic(tiny_checkpoint)
    calls = _forwards(c)
    exp, other = _exp(0), _exp(1)
    c.values(exp, keep_graph=True)
    v = c.values(other)  # without keep_graph: drops the kept forward
    returns = torch.zeros_like(v)
    s = c.train_step(other.with_fields(values=v, returns=returns))
    assert s["critic/single_pass"] == 0.0 and len(calls) == 3
    c.values(exp, keep_graph=True)
    s = c.train_step(other.with_fields(values=v, returns=returns))  # kept for exp, trained on other
    assert s["critic/single_pass"] == 0.0


def test_end_of_phase_drops_the_kept_forward(tiny_checkpoint):
    c = _critic(tiny_checkpoint)
    exp = _exp()
    v = c.values(exp, keep_graph=True)
    c.end_phase()
    assert c._pending is None
    c.begin_phase()
    s = c.train_step(exp.with_fields(values=v, returns=torch.zeros_like(v)))
    assert s["critic/single_pass"] == 0.0
