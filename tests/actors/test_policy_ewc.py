"""The modified-EWC penalty as the PolicyWorker applies it between phases:
zero at the anchor, growing as the weights move away, proportional to
``ewc.strength``."""

from __future__ import annotations

import pytest
import torch

from hbat.actors.policy import LossPart, PolicyWorker
from hbat.models import load_tokenizer
from hbat.orchestrator.config import EWCConfig
from hbat.orchestrator.data import SFTDataset, collate_sft

OPTIM = {"lr": 1e-2}


@pytest.fixture(scope="module")
def sft_batches(tiny_checkpoint, demo_files):
    tok = load_tokenizer(tiny_checkpoint)
    ds = SFTDataset.from_file(demo_files["sft"], tok, max_prompt_len=48, max_len=128, limit=8)
    return [collate_sft([ds[i] for i in range(j, j + 2)], tok.pad_token_id) for j in (0, 2, 4, 6)]


def _worker(tiny_checkpoint) -> PolicyWorker:
    return PolicyWorker(tiny_checkpoint, seed=0, torch_threads=1)


def _anchored(tiny_checkpoint, sft_batches, strength: float) -> PolicyWorker:
    """An SFT phase of two steps, ended with a modified-EWC anchor of ``strength``."""
    w = _worker(tiny_checkpoint)
    w.begin_phase("sft", OPTIM, 2, None, EWCConfig(method="modified", strength=strength, normalize="max", max_weight=1.0))
    for b in sft_batches[:2]:
        w.train_step([LossPart("sft", b)])
    stats = w.end_phase()
    assert stats["ewc/anchored_tensors"] > 0
    return w


def _move(w: PolicyWorker, batches, anchor: str | None) -> list[dict]:
    """A preference-kind phase (an SFT loss stands in for the objective: the
    penalty does not care which loss moves the weights)."""
    w.begin_phase("preference", OPTIM, len(batches), anchor)
    return [w.train_step([LossPart("sft", b)]) for b in batches]


def test_penalty_zero_at_anchor_then_grows(tiny_checkpoint, sft_batches):
    w = _anchored(tiny_checkpoint, sft_batches, strength=10.0)
    w.begin_phase("preference", OPTIM, 3, "sft")
    assert w.ewc_penalty("sft") == 0.0  # the phase starts exactly at theta*_I
    penalties = []
    for b in sft_batches[2:] + sft_batches[:1]:
        stats = w.train_step([LossPart("sft", b)])
        penalties.append(stats["ewc/penalty"])  # measured before this step's update
    penalties.append(w.ewc_penalty("sft"))
    assert penalties[0] == 0.0
    assert all(p > 0 for p in penalties[1:]), penalties  # > 0 as soon as the weights left theta*
    w.end_phase()
    # the anchor of the other kind is untouched by a phase recorded with method none
    assert set(w.anchors) == {"sft"}


def test_penalty_scales_with_strength(tiny_checkpoint, sft_batches):
    """Same anchor weights, same movement (penalty not applied while moving):
    the penalty is linear in lambda, so 10x strength gives 10x penalty."""
    weak = _anchored(tiny_checkpoint, sft_batches, strength=1.0)
    strong = _anchored(tiny_checkpoint, sft_batches, strength=10.0)
    for w in (weak, strong):
        _move(w, sft_batches[2:], anchor=None)
    for a, b in zip(weak.model.parameters(), strong.model.parameters()):
        assert torch.equal(a, b)  # identical trajectories: the comparison is fair
    p_weak, p_strong = weak.ewc_penalty("sft"), strong.ewc_penalty("sft")
    assert p_weak > 0
    assert p_strong > p_weak
    assert p_strong == pytest.approx(10 * p_weak, rel=1e-5)


def test_penalty_pulls_towards_anchor(tiny_checkpoint, sft_batches):
    """With the anchor applied, training ends closer to theta* than without it."""
    free = _anchored(tiny_checkpoint, sft_batches, strength=1e4)
    held = _anchored(tiny_checkpoint, sft_batches, strength=1e4)
    _move(free, sft_batches[2:], anchor=None)
    _move(held, sft_batches[2:], anchor="sft")
    assert held.ewc_penalty("sft") < free.ewc_penalty("sft")


def test_anchor_must_exist(tiny_checkpoint):
    w = _worker(tiny_checkpoint)
    with pytest.raises(ValueError, match="no EWC anchor recorded"):
        w.begin_phase("sft", OPTIM, 1, "preference")
