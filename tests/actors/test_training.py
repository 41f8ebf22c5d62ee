"""``actors/training.py``: the optimizer, LR schedule and micro-batch split
every trainable role shares. Each test pins a property a training step relies on."""

from __future__ import annotations

import math

import pytest
import torch

from hbat.actors.training import build_optimizer, optim_config, split_micro
from hbat.orchestrator.config import OptimConfig


def _lrs(s: OptimConfig, total: int, steps: int) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt, sched = build_optimizer(model, s, total)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


# --------------------------------------------------------------------------- split_micro
def _batch(n=5):
    return {
        "input_ids": torch.arange(n * 3).view(n, 3),
        "loss_mask": torch.ones(n, 3, dtype=torch.long),
        "text": [f"row{i}" for i in range(n)],
        "scalar": torch.tensor(7.0),
        "tag": "keep",
    }


def test_split_micro_covers_every_row_once_in_order():
    b = _batch(5)
    parts = split_micro(b, 2)
    assert [len(p["input_ids"]) for p in parts] == [2, 3] or [len(p["input_ids"]) for p in parts] == [3, 2]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), b["input_ids"])
    assert sum((p["text"] for p in parts), []) == b["text"]
    for p in parts:  # fields that are not per-row travel unchanged
        assert p["tag"] == "keep" and float(p["scalar"]) == 7.0


def test_split_micro_more_parts_than_rows_and_one_part():
    b = _batch(3)
    assert len(split_micro(b, 10)) == 3
    one = split_micro(b, 1)
    assert len(one) == 1 and one[0] is b


def test_split_micro_paired_keeps_pairs_and_layout():
    """collate_pairwise puts chosen rows [0, B) then rejected rows [B, 2B): every
    micro-batch must hold whole pairs in that same layout."""
    B = 5
    ids = torch.cat([torch.arange(B), 100 + torch.arange(B)])[:, None]  # chosen i <-> rejected 100+i
    parts = split_micro({"input_ids": ids, "num_pairs": B}, 3, paired=True)
    assert len(parts) == 3
    seen = []
    for p in parts:
        x = p["input_ids"][:, 0]
        n = len(x) // 2
        assert p["num_pairs"] == n
        assert torch.equal(x[n:], x[:n] + 100)  # row i's rejected is row n+i
        seen += x[:n].tolist()
    assert seen == list(range(B))


# ------------------------------------------------------------------------ build_optimizer
def test_build_optimizer_only_trainable_parameters_and_settings():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    s = OptimConfig(lr=3e-4, weight_decay=0.1, betas=(0.8, 0.9))
    opt, _ = build_optimizer(model, s, 10)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == 3 and all(p is not model[0].weight for p in params)
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert (g["lr"], g["weight_decay"], tuple(g["betas"])) == (3e-4, 0.1, (0.8, 0.9))


def test_build_optimizer_refuses_a_frozen_model():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(model, OptimConfig(), 1)


def test_warmup_then_cosine_reaches_zero_at_total_steps():
    lr, total, warm = 1e-3, 10, 2
    lrs = _lrs(OptimConfig(lr=lr, warmup_steps=warm, scheduler="cosine"), total, total + 1)
    assert lrs[0] == pytest.approx(lr / warm) and lrs[1] == pytest.approx(lr)
    for step in range(warm, total + 1):
        progress = (step - warm) / (total - warm)
        assert lrs[step] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * progress)), abs=1e-12), step
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)  # the last optimizer step of the phase, not earlier
    assert lrs[total - 1] > 0


def test_linear_and_constant_schedules():
    lin = _lrs(OptimConfig(lr=1.0, scheduler="linear"), 4, 5)
    assert lin == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    const = _lrs(OptimConfig(lr=0.5), 4, 6)
    assert const == pytest.approx([0.5] * 6)


def test_start_step_resumes_the_schedule_where_an_earlier_phase_left_it():
    """The critic rebuilds its AdamW per PPO phase; its cosine schedule must
    carry on over the run: the rebuilt optimizer's lr sequence from step k is
    the fresh schedule's from step k."""
    s, total = OptimConfig(lr=1e-3, warmup_steps=2, scheduler="cosine"), 10
    fresh = _lrs(s, total, total + 1)
    for k in (1, 4, 7):
        model = torch.nn.Linear(2, 2)
        opt, sched = build_optimizer(model, s, total, start_step=k)
        seen = []
        for _ in range(total + 1 - k):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert seen == pytest.approx(fresh[k:], abs=1e-12), k
        assert opt.param_groups[0]["lr"] == pytest.approx(sched.get_last_lr()[0])


def test_optim_config_crosses_as_itself_or_from_a_dict():
    """The typed section reaches the actor unchanged; a dict (YAML, old checkpoints) is validated into one."""
    c = OptimConfig(lr=2e-5, betas=(0.9, 0.99), grad_accum=3)
    assert optim_config(c) is c
    d = optim_config({"lr": 2e-5, "betas": [0.9, 0.99], "grad_accum": 3})
    assert d == c and d.betas == (0.9, 0.99)
    with pytest.raises(Exception, match="lr"):
        optim_config({"lr": -1})
