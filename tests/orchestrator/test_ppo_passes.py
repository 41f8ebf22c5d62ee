"""The PPO step runs only the forward passes whose results are used (real
driver runs on tiny random models, local Ray; the real ``compute_targets`` is
wrapped to record the experience each step trained on):

* ``kl_coef: 0`` and one update per rollout batch: neither the reference nor
  the old-policy forward runs -- the policy's training forward supplies the
  old log-probs (ratio 1) -- and the policy still learns;
* several mini-batches per batch: the old-policy forward runs (a later
  mini-batch's ratio needs the sampling policy's log-probs), the reference
  still does not;
* ``kl_coef > 0`` runs both (also covered, with the exact token rewards, by
  ``test_driver_ewc``).
"""

from __future__ import annotations

import json

import hbat.orchestrator.steps.ppo as ppo_step
from hbat.actors.experience import Experience
from hbat.orchestrator.config import validate_config
from hbat.orchestrator.driver import Driver, run_roles
from hbat.orchestrator.metrics import read_metrics


def _run_recording(tree, monkeypatch) -> tuple[list[Experience], list[dict]]:
    seen = []

    def spy(exp, ppo, group):
        seen.append(exp)
        return real(exp, ppo, group)

    real = ppo_step.compute_targets
    monkeypatch.setattr(ppo_step, "compute_targets", spy)
    cfg = validate_config(tree)
    d = Driver(cfg)
    try:
        d.run()
    finally:
        d.shutdown()
    return seen, [r for r in read_metrics(cfg.run_dir()) if "ppo/policy_loss" in r]


def test_no_kl_and_one_update_skips_reference_and_old_policy(ray_local, make_tree, monkeypatch):
    tree = make_tree("two_stage", "ppo", name="grpo-one-update", **{
        "ppo.advantage": "grpo", "ppo.kl_coef": 0.0, "ppo.mini_batch_size": 4, "ppo.steps_per_phase": 2,
        "ppo.samples_per_prompt": 2, "ppo.prompts_per_step": 2, "ewc.method": "none"})
    seen, rows = _run_recording(tree, monkeypatch)
    assert len(seen) == len(rows) >= 2
    for exp in seen:
        assert exp.ref_logprobs is None and exp.logprobs is None  # neither forward ran
        assert exp.scores is not None
    assert all("ppo/kl" not in r for r in rows)  # no KL measured, none reported
    assert all(r["ppo/clipfrac"] == 0.0 for r in rows)  # ratio exactly 1 on the only update
    placed = json.loads((validate_config(tree).run_dir() / "placement.json").read_text())
    assert "policy-0" in placed and not any(name.startswith("reference") for name in placed)  # nothing reads it


def test_reference_is_placed_only_when_a_phase_reads_it(make_tree):
    def roles(*args, **over):
        return run_roles(validate_config(make_tree(*args, **over)))

    assert "reference" not in roles("two_stage", "ppo", **{"ppo.kl_coef": 0.0})
    assert "reference" in roles("two_stage", "ppo", **{"ppo.kl_coef": 0.05})
    assert "reference" in roles("two_stage", "dpo")
    assert "reference" in roles("hbat", "dpo")


def test_several_minibatches_keep_the_old_policy_pass(ray_local, make_tree, monkeypatch):
    tree = make_tree("two_stage", "ppo", name="grpo-two-updates", **{
        "ppo.advantage": "grpo", "ppo.kl_coef": 0.0, "ppo.mini_batch_size": 2, "ppo.steps_per_phase": 1,
        "ppo.samples_per_prompt": 2, "ppo.prompts_per_step": 2, "ewc.method": "none"})
    seen, _ = _run_recording(tree, monkeypatch)
    assert seen
    for exp in seen:
        assert exp.logprobs is not None and exp.ref_logprobs is None



def test_gae_with_one_update_reuses_the_critic_forward(ray_local, make_tree, monkeypatch):
    """One critic step per batch: the step trains on the rows it scored, in
    order, so the critic backpropagates through its scoring forward; with two
    mini-batches it cannot, and runs its forward again."""
    base = {"ppo.advantage": "gae", "ppo.kl_coef": 0.0, "ppo.steps_per_phase": 2, "ppo.samples_per_prompt": 2,
            "ppo.prompts_per_step": 2, "ewc.method": "none"}
    _, rows = _run_recording(make_tree("two_stage", "ppo", name="gae-one-update",
                                       **base, **{"ppo.mini_batch_size": 4}), monkeypatch)
    assert len(rows) >= 2 and all(r["critic/single_pass"] == 1.0 for r in rows)
    assert all(r["critic/clipfrac"] == 0.0 for r in rows)
    _, rows = _run_recording(make_tree("two_stage", "ppo", name="gae-two-updates",
                                       **base, **{"ppo.mini_batch_size": 2}), monkeypatch)
    assert rows and all(r["critic/single_pass"] == 0.0 for r in rows)
