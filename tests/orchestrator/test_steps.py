"""The step-runner seam: a new algorithm is one class plus a ``register_step``
line. Here a toy preference algorithm -- SFT on the chosen responses of the
preference pairs -- runs through the real driver inside an HBAT schedule."""

from __future__ import annotations

import pytest

from hbat.actors.policy import LossPart
from hbat.orchestrator.config import ConfigError, validate_config
from hbat.orchestrator.data import collate_sft
from hbat.orchestrator.driver import Driver
from hbat.orchestrator.metrics import read_metrics
from hbat.orchestrator.steps import PREFERENCE_STEPS, StepRunner, register_step


class SFTOnChosen(StepRunner):
    """Preference phases that imitate the chosen answers (uses the ``preference_loss`` section's budget)."""

    name = "sft_on_chosen"
    section = "preference_loss"

    @property
    def data_key(self) -> str:
        return "preference"

    def part(self, examples):
        rows = [{"input_ids": e["chosen_input_ids"], "loss_mask": e["chosen_loss_mask"]} for e in examples]
        return LossPart("sft", collate_sft(rows, self.data.pad_id))

    def step(self, examples, ctx):
        return self.roles.policy.train([self.part(examples)], self.optim).get()

    def fisher_parts(self, draw, n, phase_index):
        return [self.part(draw(k)) for k in range(n)]


@pytest.fixture
def toy_registered():
    register_step(SFTOnChosen)
    try:
        yield
    finally:
        PREFERENCE_STEPS.pop(SFTOnChosen.name, None)


def test_unknown_algorithm_is_a_config_error(make_tree):
    with pytest.raises(ConfigError, match="schedule.preference.*unknown preference algorithm 'sft_on_chosen'"):
        validate_config(make_tree("hbat", "sft_on_chosen"))


def test_a_registered_toy_algorithm_runs_in_hbat(ray_local, make_tree, toy_registered):
    from hbat.orchestrator.evaluation.compare import parse_method

    assert parse_method("hbat-sft_on_chosen").preference == "sft_on_chosen"
    cfg = validate_config(make_tree("hbat", "sft_on_chosen"))
    d = Driver(cfg)
    try:
        summary = d.run()
        assert d.role_names == ["policy"]  # it asked for no reference, rollout, reward or critic
    finally:
        d.shutdown()
    rows = [r for r in read_metrics(cfg.run_dir()) if "time/step_s" in r]
    pref = [r for r in rows if r["phase"].startswith("preference")]
    assert len(pref) == 2 * cfg.preference_loss.steps_per_phase and summary["phases"] == 4
    assert all("sft/loss" in r and "pref/loss" not in r for r in pref)
    assert all("ewc/penalty" in r for r in pref)  # HBAT's anchors apply to the new algorithm unchanged
    # the chosen answers' NLL falls over the preference phases (it learns them)
    assert pref[-1]["sft/loss"] < pref[0]["sft/loss"]
