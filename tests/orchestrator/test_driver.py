"""The driver sizes each phase's LR schedule in optimizer steps, and gives
``joint`` the same budget per round as ``hbat`` (no actors started)."""

from __future__ import annotations

import pytest

from hbat.orchestrator.config import validate_config
from hbat.orchestrator.driver import Driver


def _driver(tree) -> Driver:
    d = Driver(validate_config(tree))
    d.load_data()
    return d


def test_ppo_schedule_counts_epochs_and_minibatches(make_tree):
    d = _driver(make_tree("hbat", "ppo", **{"ppo.ppo_epochs": 3, "ppo.mini_batch_size": 2,
                                           "ppo.prompts_per_step": 2, "ppo.samples_per_prompt": 3,
                                           "ppo.steps_per_phase": 2}))
    pref = next(p for p in d.plan if p.kind == "preference")
    sft = next(p for p in d.plan if p.kind == "sft")
    # 2 PPO steps x 3 epochs x ceil(2*3 / 2) mini-batches
    assert d.optimizer_steps(pref, d.phase_setup(pref)) == 2 * 3 * 3
    assert d.optimizer_steps(sft, d.phase_setup(sft)) == 2
    assert d.optimizer_steps_of("preference") == 2 * 18  # two preference phases


def test_joint_gets_hbat_budget(make_tree):
    tree = make_tree("joint", "dpo", **{"sft.steps_per_phase": 3, "preference_loss.steps_per_phase": 1,
                                       "sft.batch_size": 4, "preference_loss.batch_size": 4,
                                       "sft.optim": {"lr": 4e-5}, "preference_loss.optim": {"lr": 1e-6}})
    d = _driver(tree)
    s = d.phase_setup(d.plan[0])
    assert s.steps == 4  # 3 SFT + 1 preference steps, as an hbat round
    assert (s.batch_size, s.sft_batch_size) == (1, 3)  # 4 examples of each kind per step -> same examples per round
    assert s.optim.lr == pytest.approx((3 * 4e-5 + 1 * 1e-6) / 4)
