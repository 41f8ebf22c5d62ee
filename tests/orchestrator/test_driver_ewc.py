"""Config values that must reach the actors, through real driver runs (tiny
random models, local Ray): ``ewc.method=fisher`` end to end with DPO and with
PPO, a non-default ``ewc.max_weight`` in the recorded anchors, and a
non-default ``ppo.kl_coef`` in the token rewards the PPO step trains on."""

from __future__ import annotations

import json

import pytest
import torch

import hbat.orchestrator.steps.ppo as ppo_step
from hbat.objectives import kl_estimate
from hbat.actors.sharded_state import read_meta
from hbat.orchestrator.config import validate_config
from hbat.orchestrator.driver import Driver
from hbat.orchestrator.metrics import read_metrics


def _run(tree: dict):
    cfg = validate_config(tree)
    d = Driver(cfg)
    try:
        summary = d.run()
    finally:
        d.shutdown()
    run_dir = cfg.run_dir()
    folder = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    policy = read_meta(folder / "policy")  # the training state's meta: anchors' per-tensor weights
    return cfg, d.plan, summary, read_metrics(run_dir), policy


def _phase_end_rows(rows, plan):
    """The row logged at each phase's end (end_phase stats + probes)."""
    return {p.name: [r for r in rows if r.get("phase") == p.name and "ewc/anchored_tensors" in r] for p in plan}


def _check_fisher_run(cfg, plan, summary, rows, policy, max_weight):
    assert summary["phases"] == len(plan) == 4
    # every phase recorded an anchor (Algorithm 1), from the Fisher of its own objective
    ends = _phase_end_rows(rows, plan)
    assert all(len(v) == 1 and v[0]["ewc/anchored_tensors"] > 0 for v in ends.values()), ends
    assert set(policy["anchors"]) == {"sft", "preference"}
    for kind, a in policy["anchors"].items():
        w = a["weights"]
        # normalize max: the most important tensor gets exactly ewc.max_weight
        assert max(w.values()) == pytest.approx(max_weight), kind
        assert min(w.values()) < max_weight  # importances differ between tensors
    # later phases are penalised toward the other objective's anchor
    steps = [r for r in rows if "time/step_s" in r]
    for p in plan[1:]:
        pen = [r["ewc/penalty"] for r in steps if r["phase"] == p.name]
        assert pen and pen[0] == pytest.approx(0.0, abs=1e-12) and all(x >= 0 for x in pen), (p.name, pen)
    assert any(r.get("ewc/penalty", 0) > 0 for r in steps)


def test_fisher_ewc_runs_with_dpo_and_max_weight_reaches_the_anchors(ray_local, make_tree):
    tree = make_tree("hbat", "dpo", name="fisher-dpo", **{"ewc.method": "fisher", "ewc.max_weight": 7.5,
                                                          "ewc.fisher_batches": 2})
    cfg, plan, summary, rows, policy = _run(tree)
    _check_fisher_run(cfg, plan, summary, rows, policy, 7.5)


def test_fisher_ewc_runs_with_ppo_and_kl_coef_reaches_token_rewards(ray_local, make_tree, monkeypatch):
    """The PPO step's token rewards are ``-kl_coef * KL`` on every response token
    before the last: with kl_coef 0.37 from the config, exactly that."""
    seen = []

    def spy(exp, ppo, group):  # records what the real compute_targets returned
        out, stats = real(exp, ppo, group)
        seen.append((out, ppo.kl_coef, ppo.kl_estimator))
        return out, stats

    real = ppo_step.compute_targets
    monkeypatch.setattr(ppo_step, "compute_targets", spy)
    tree = make_tree("hbat", "ppo", name="fisher-ppo", **{"ewc.method": "fisher", "ewc.max_weight": 3.0,
                                                          "ewc.fisher_batches": 2, "ppo.kl_coef": 0.37,
                                                          "ppo.steps_per_phase": 2, "ppo.max_new_tokens": 6})
    cfg, plan, summary, rows, policy = _run(tree)
    _check_fisher_run(cfg, plan, summary, rows, policy, 3.0)
    assert len(seen) == 4  # 2 PPO steps in each of 2 preference phases
    nonzero = 0
    for exp, coef, est in seen:
        assert coef == 0.37
        mask = exp.action_mask.bool()
        last = mask.long().cumsum(1) == mask.sum(1, keepdim=True)  # each row's last response token
        inner = mask & ~last
        kl = kl_estimate(exp.logprobs, exp.ref_logprobs, est)
        torch.testing.assert_close(exp.token_rewards[inner], -0.37 * kl[inner], rtol=1e-5, atol=1e-7)
        nonzero += int((kl[inner].abs() > 1e-6).sum())
    assert nonzero > 0  # a step after the first moved the policy away from the reference


def test_fisher_checkpoint_json_state(ray_local, make_tree):
    """A fisher run's checkpoint state is complete (it resumes like any other)."""
    tree = make_tree("alternating", "dpo", name="fisher-state", **{"ewc.method": "fisher"})
    cfg, plan, summary, rows, policy = _run(tree)
    latest = cfg.run_dir() / "checkpoints" / (cfg.run_dir() / "checkpoints" / "latest").read_text().strip()
    state = json.loads((latest / "state.json").read_text())
    assert state["phase_index"] == len(plan) and state["completed_phases"] == [p.name for p in plan]
    assert policy["anchors"] == {}  # the ablation records no anchors, even with method fisher
