"""A reward made of rule functions alone: no reward model is trained or loaded
and no preference data is needed (a verifiable-reward GRPO run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hbat.orchestrator.config import ConfigError, load_config, validate_config
from hbat.orchestrator.driver import Driver
from hbat.orchestrator.metrics import read_metrics

RULE = "hbat.orchestrator.demo_data:contains_reference"


def test_rules_only_grpo_runs_without_preference_data_or_reward_model(ray_local, make_tree):
    tree = make_tree("hbat", "ppo", name="rules-only", **{
        "model.reward": None, "data.preference": None, "reward_model.rule_rewards": [RULE],
        "ppo.advantage": "grpo", "ppo.kl_coef": 0.0})
    cfg = validate_config(tree)
    assert not cfg.reward_uses_model
    d = Driver(cfg)
    try:
        summary = d.run()
        assert "critic" not in d.role_names and "reward" in d.role_names
    finally:
        d.shutdown()
    run_dir = cfg.run_dir()
    assert not (run_dir / "reward_model").exists()  # no Bradley-Terry stage
    rows = read_metrics(run_dir)
    assert not [r for r in rows if r.get("phase") == "reward_model"]
    scores = [r["ppo/score"] for r in rows if "ppo/score" in r]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)  # the rule's 0/1 reward, nothing else
    assert summary["phases"] == 4


def test_a_ppo_run_needs_some_reward(make_tree):
    tree = make_tree("hbat", "ppo", **{"model.reward": None, "data.preference": None})
    with pytest.raises(ConfigError, match="reward_model.rule_rewards"):
        validate_config(tree)
    # model_weight 0 turns a given reward model off: rules alone remain
    tree = make_tree("hbat", "ppo", **{"reward_model.model_weight": 0.0, "reward_model.rule_rewards": [RULE]})
    assert not validate_config(tree).reward_uses_model


def test_shipped_rules_config_validates():
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "grpo_rules.yaml")
    assert cfg.data.preference is None and cfg.model.reward is None and not cfg.reward_uses_model
    assert cfg.ppo.advantage == "grpo" and cfg.reward_model.rule_rewards == [RULE]
