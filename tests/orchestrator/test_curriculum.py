"""``preference_loss.curriculum``: preference pairs from easy to hard (large gap first) across
the shards and steps of the preference phases, through the real driver and data
path, for DPO and SLiC alike; ``none`` keeps today's seeded random batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hbat.orchestrator.config import ConfigError, validate_config
from hbat.orchestrator.driver import Driver
from hbat.orchestrator.run_data import batch_indices

# 12 pairs whose two difficulty keys disagree, so each curriculum has its own order
STRENGTH = [0, 2, 1, 3, 0, 1, 2, 3, 1, 0, 2, 3]
SCORES = [(0.9, 0.1), (0.5, 0.4), (0.2, 0.9), (0.7, 0.0), (0.6, 0.6), (0.8, 0.3),
          (0.3, 0.2), (1.0, 0.9), (0.4, 0.1), (0.9, 0.5), (0.2, 0.0), (0.55, 0.5)]


@pytest.fixture
def gap_pairs(tmp_path) -> str:
    rows = []
    for i, (g, (cs, rs)) in enumerate(zip(STRENGTH, SCORES)):
        rows.append({"prompt": f"What is {i} plus 1?", "chosen": f"Great question! {i} plus 1 is {i + 1}.",
                     "rejected": f"{i + 2}.", "strength_gap": g, "chosen_score": cs, "rejected_score": rs})
    path = tmp_path / "gaps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _gap(record_line: int, key: str) -> float:
    i = record_line - 1
    return STRENGTH[i] if key == "strength_gap" else SCORES[i][0] - SCORES[i][1]


def _tree(make_tree, gap_pairs, curriculum, loss="dpo", **extra):
    return make_tree("hbat", "dpo", **{"data.preference": gap_pairs, "data.limit": 12, "preference_loss.loss": loss,
                                       "preference_loss.curriculum": curriculum, "preference_loss.steps_per_phase": 2,
                                       "preference_loss.batch_size": 2, "schedule.rounds": 2, **extra})


def _steps(driver: Driver) -> list[tuple[int, list[int]]]:
    """(phase index, source lines) of every preference step, as the driver's step loop picks them."""
    out = []
    for i, phase in enumerate(driver.plan):
        if phase.kind != "preference":
            continue
        setup = driver.phase_setup(phase)
        for step in range(setup.steps):
            idx = driver.runner(phase).step_indices(len(setup.data), setup.batch_size, i, step, setup.steps)
            out.append((i, [setup.data.source_of(j)[2] for j in idx]))
    return out


@pytest.mark.parametrize("loss", ["dpo", "slic", "ipo"])
@pytest.mark.parametrize("curriculum", ["strength_gap", "score_gap"])
def test_curriculum_orders_within_and_across_shards(make_tree, gap_pairs, curriculum, loss):
    driver = Driver(validate_config(_tree(make_tree, gap_pairs, curriculum, loss)))
    driver.load_data()
    steps = _steps(driver)
    gaps = [[_gap(line, curriculum) for line in lines] for _, lines in steps]
    flat = [g for batch in gaps for g in batch]
    assert flat == sorted(flat, reverse=True), gaps  # easy to hard, step after step, phase after phase
    phases = sorted({p for p, _ in steps})
    assert len(phases) == 2
    first = [g for (p, _), b in zip(steps, gaps) if p == phases[0] for g in b]
    second = [g for (p, _), b in zip(steps, gaps) if p == phases[1] for g in b]
    assert min(first) >= max(second)  # round 1 trains the easier half
    # each phase walks its whole shard (2 steps of 2 over 6 pairs): its easiest pair first, its hardest last
    every = sorted((_gap(n, curriculum) for n in range(1, 13)), reverse=True)
    assert (first[0], first[-1], second[0], second[-1]) == (every[0], every[5], every[6], every[11])


def test_none_keeps_the_seeded_random_batches(make_tree, gap_pairs):
    driver = Driver(validate_config(_tree(make_tree, gap_pairs, "none")))
    driver.load_data()
    assert driver.runners["preference"].dataset() is driver.data.get("preference")  # file order, untouched
    for i, phase in enumerate(driver.plan):
        setup = driver.phase_setup(phase)
        for step in range(setup.steps):
            n, bs = len(setup.data), setup.batch_size
            assert driver.runner(phase).step_indices(n, bs, i, step, setup.steps) == \
                batch_indices(driver.cfg.run.seed, n, bs, i, step)
    lines = [g for _, b in _steps(driver) for g in b]
    assert [_gap(x, "strength_gap") for x in lines] != sorted([_gap(x, "strength_gap") for x in lines], reverse=True)


def test_curriculum_needs_the_gap_field_and_pairwise_loss(make_tree, gap_pairs, tmp_path):
    from hbat.orchestrator.data import DataError

    rows = [json.loads(x) for x in Path(gap_pairs).read_text().splitlines()]
    del rows[3]["strength_gap"]
    rows[3].pop("chosen_score")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    driver = Driver(validate_config(_tree(make_tree, str(bad), "score_gap")))
    with pytest.raises(DataError) as err:
        driver.load_data()
    assert str(bad) in str(err.value) and "line 4" in str(err.value) and "'score_gap'" in str(err.value)
    # strength_gap falls back to the ranks when the gap itself is absent
    rows[3].update(chosen_rank=1, rejected_rank=3)
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    driver = Driver(validate_config(_tree(make_tree, str(bad), "strength_gap")))
    driver.load_data()
    assert _steps(driver)[0][1][0] == 8  # the first gap-3 pair in file order comes first
    with pytest.raises(ConfigError, match="preference_loss.curriculum"):
        Driver(validate_config(_tree(make_tree, gap_pairs, "strength_gap", "ulma",
                                     **{"data.pointwise": gap_pairs})))


def test_train_cli_names_the_missing_field(make_tree, gap_pairs, tmp_path, capsys, monkeypatch):
    import hbat.orchestrator.driver as driver_mod
    from hbat.orchestrator.cli import main

    monkeypatch.setattr(driver_mod.Driver, "start", lambda self: (_ for _ in ()).throw(AssertionError("started")))
    rows = [json.loads(x) for x in Path(gap_pairs).read_text().splitlines()]
    rows[1] = {k: v for k, v in rows[1].items() if k == "prompt" or k in ("chosen", "rejected")}
    bad = tmp_path / "nogap.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_tree(make_tree, str(bad), "strength_gap")))
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "line 2" in err and "'strength_gap'" in err


class _Recording:
    def __init__(self, shard, log):
        self.shard, self.log = shard, log

    def __len__(self):
        return len(self.shard)

    def __getitem__(self, i):
        self.log.append(self.shard.source_of(i)[2])
        return self.shard[i]


class CurriculumRecordingDriver(Driver):
    """The real driver; preference phases note which source lines each step read."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.read: list[int] = []

    def phase_setup(self, phase):
        from dataclasses import replace

        setup = super().phase_setup(phase)
        if phase.kind != "preference":
            return setup
        return replace(setup, data=_Recording(setup.data, self.read))


def test_a_real_slic_run_trains_easy_to_hard(ray_local, make_tree, gap_pairs):
    cfg = validate_config(_tree(make_tree, gap_pairs, "strength_gap", "slic", **{"sft.steps_per_phase": 1}))
    driver = CurriculumRecordingDriver(cfg)
    try:
        summary = driver.run()
    finally:
        driver.shutdown()
    assert summary["global_steps"] == 2 * (1 + 2)
    gaps = [_gap(n, "strength_gap") for n in driver.read]
    assert len(gaps) == 2 * 2 * 2 and gaps == sorted(gaps, reverse=True), gaps
    assert (gaps[0], gaps[-1]) == (3, 0)
