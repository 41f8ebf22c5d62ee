"""Every schedule runs end to end through the driver and the Ray actors (tiny
random models, local Ray), for PPO and for DPO, and HBAT runs its phases in
exactly the order and on exactly the shards Algorithm 1 of the HBAT paper specifies (docs/architecture.md §2).

Loss and advantage variants ride along with the schedules (they are
orthogonal to them): DPO with ``dpo``, ``ipo``, ``slic``, ``cdpo`` and the
point-wise ``ulma`` on ``data.pointwise``; PPO with GAE (critic), ``grpo``
and ``rloo`` (critic-free), and one PPO run that trains its reward model first.
Each case is a real run (fresh actors, placement group, checkpoints, final
export); actor start-up (importing torch/transformers) dominates its time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hbat.orchestrator.config import validate_config
from hbat.orchestrator.driver import Driver
from hbat.orchestrator.metrics import read_metrics
from hbat.orchestrator.schedules import SCHEDULES


class _RecordingView:
    """A shard that records the source line of every example the driver reads."""

    def __init__(self, shard, log: list):
        self.shard, self.log = shard, log

    def __len__(self):
        return len(self.shard)

    def __getitem__(self, i):
        self.log.append(self.shard.origin(i))
        return self.shard[i]


class RecordingDriver(Driver):
    """The real driver; it only notes which shard each phase trained on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.used: list[tuple[str, list[str]]] = []  # (phase name, origins read)

    def phase_setup(self, phase):
        from dataclasses import replace

        setup = super().phase_setup(phase)
        logs = dict(self.used)
        if phase.name not in logs:
            self.used.append((phase.name, []))
            logs = dict(self.used)
        return replace(setup, data=_RecordingView(setup.data, logs[phase.name]))


@dataclass
class RunResult:
    cfg: object
    plan: list
    summary: dict
    state: dict
    rows: list[dict]
    run_dir: Path
    used: list = field(default_factory=list)

    def rows_of(self, phase_name: str) -> list[dict]:
        return [r for r in self.rows if r.get("phase") == phase_name and "phase/index" not in r]

    def step_rows(self) -> list[dict]:
        return [r for r in self.rows if "time/step_s" in r]


def _unmarked(plan):
    """The plan without build_plan's reference-refresh marks (tested on their own)."""
    from dataclasses import replace

    return [replace(p, refresh_reference=False) for p in plan]


def run_schedule(tree: dict) -> RunResult:
    cfg = validate_config(tree)
    driver = RecordingDriver(cfg)
    try:
        summary = driver.run()
    finally:
        driver.shutdown()
    run_dir = cfg.run_dir()
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    state = json.loads((run_dir / "checkpoints" / latest / "state.json").read_text())
    return RunResult(cfg, driver.plan, summary, state, read_metrics(run_dir), run_dir, driver.used)


def phase_budget(cfg, phase) -> int:
    """Steps a phase must run: its own fixed count, else the config's per-phase budget."""
    if phase.steps is not None:
        return phase.steps
    if phase.kind == "sft":
        return cfg.sft.steps_per_phase
    pref = cfg.ppo.steps_per_phase if cfg.schedule.preference == "ppo" else cfg.preference_loss.steps_per_phase
    # joint carries its round's instruction budget as well (same optimizer steps as hbat)
    return pref + cfg.sft.steps_per_phase if phase.joint_budget else pref


def expected_steps(cfg, plan) -> int:
    return sum(phase_budget(cfg, p) for p in plan)


def check_common(res: RunResult) -> None:
    """Every phase ran once, in plan order, with its step budget; a loadable final model."""
    cfg, plan = res.cfg, res.plan
    names = [p.name for p in plan]
    assert res.summary["phases"] == len(plan)
    assert res.summary["global_steps"] == expected_steps(cfg, plan)
    assert res.state["completed_phases"] == names
    assert res.state["phase_index"] == len(plan)
    boundaries = [(int(r["phase/index"]), r["phase"]) for r in res.rows if "phase/index" in r]
    assert boundaries == list(enumerate(names))
    steps = res.step_rows()
    assert [r["step"] for r in steps] == list(range(1, res.summary["global_steps"] + 1))
    order = [names.index(r["phase"]) for r in steps]
    assert order == sorted(order)
    for p in plan:
        assert sum(r["phase"] == p.name for r in steps) == phase_budget(cfg, p), p.name
    final = Path(res.summary["final_checkpoint"])
    assert (final / "config.json").exists()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(final)
    assert sum(p.numel() for p in model.parameters()) > 0


def check_losses(res: RunResult) -> None:
    """Each phase optimised the objectives its schedule says, and nothing else."""
    cfg = res.cfg
    ppo = cfg.schedule.preference == "ppo"
    for p in res.plan:
        rows = [r for r in res.step_rows() if r["phase"] == p.name]
        assert rows, p.name
        for r in rows:
            assert all(math.isfinite(v) for v in r.values() if isinstance(v, float)), f"{p.name}: {r}"
            if p.kind == "sft":
                assert "sft/loss" in r and "pref/loss" not in r and "ppo/policy_loss" not in r
                continue
            assert ("sft/loss" in r) == bool(p.sft_mix), (p.name, sorted(r))
            if ppo:
                assert "ppo/policy_loss" in r and "ppo/score" in r and "ppo/kl" in r
                assert ("critic/value_loss" in r) == (cfg.ppo.advantage == "gae"), sorted(r)
            else:
                assert "pref/loss" in r
        penalised = p.anchor is not None
        assert all(("ewc/penalty" in r) == penalised for r in rows), (p.name, p.anchor)


# ---------------------------------------------------------------------------------- DPO


DPO_CASES = [
    ("hbat", {"preference_loss.loss": "dpo"}),
    ("alternating", {"preference_loss.loss": "ipo"}),
    ("two_stage", {"preference_loss.loss": "slic", "schedule.sft_warmup_steps": 1}),  # with the optional SFT warm-up stage
    ("ptx", {"preference_loss.loss": "cdpo"}),
    # point-wise ULMA: learns from labelled single responses (data.pointwise), no pairs
    ("joint", {"preference_loss.loss": "ulma", "data.pointwise": "POINTWISE", "data.preference": None}),
    ("sft_only", {}),
]

_cache: dict[str, RunResult] = {}


@pytest.fixture
def dpo_hbat_run(ray_local, make_tree):
    """The DPO HBAT run, shared by the schedule test and the order/shard test."""
    if "hbat" not in _cache:
        _cache["hbat"] = run_schedule(make_tree("hbat", "dpo", **{"preference_loss.loss": "dpo"}))
    return _cache["hbat"]


@pytest.mark.parametrize("schedule,overrides", DPO_CASES, ids=[f"{s}-{o.get('preference_loss.loss', 'none')}" for s, o in DPO_CASES])
def test_dpo_schedule_end_to_end(ray_local, make_tree, demo_files, request, schedule, overrides):
    if schedule == "hbat":
        res = request.getfixturevalue("dpo_hbat_run")
    else:
        overrides = {k: (demo_files["pointwise"] if v == "POINTWISE" else v) for k, v in overrides.items()}
        res = run_schedule(make_tree(schedule, "dpo", **overrides))
    check_common(res)
    check_losses(res)
    if res.cfg.preference_loss.loss == "ulma":
        rows = [r for r in res.step_rows() if "pref/loss" in r]
        assert rows and res.cfg.data.preference is None  # learned from point-wise labels alone
    if res.cfg.schedule.sft_warmup_steps:
        assert res.plan[0].name == "sft-warmup" and _unmarked(res.plan[1:]) == SCHEDULES[schedule](res.cfg)
    if schedule == "sft_only":
        assert all(p.kind == "sft" for p in res.plan)


# ---------------------------------------------------------------------------------- PPO


PPO_CASES = [
    # trains its Bradley-Terry reward model first (reward_model stage), GAE + critic
    ("hbat", {"model.reward": None}),
    ("alternating", {"ppo.advantage": "grpo"}),
    ("two_stage", {}),
    ("ptx", {"ppo.advantage": "grpo"}),
    ("joint", {"ppo.advantage": "rloo"}),
    ("sft_only", {}),
]


@pytest.mark.parametrize("schedule,overrides", PPO_CASES, ids=[s for s, _ in PPO_CASES])
def test_ppo_schedule_end_to_end(ray_local, make_tree, schedule, overrides):
    res = run_schedule(make_tree(schedule, "ppo", **overrides))
    check_common(res)
    check_losses(res)
    rm_dir = res.run_dir / "reward_model"
    if schedule == "hbat":
        assert (rm_dir / "config.json").exists()
        assert res.state["reward_model"] == str(rm_dir)
        assert [r for r in res.rows if r.get("phase") == "reward_model" and "rm/loss" in r]
    else:
        assert not rm_dir.exists()
    if schedule == "sft_only":
        assert all(p.kind == "sft" for p in res.plan)


# ------------------------------------------------------------------- HBAT order and shards


def test_hbat_plan_matches_algorithm_1(make_tree):
    """Algorithm 1 (docs/architecture.md §2): round t = instruction phase on D_I^t (anchored on the previous
    preference phase, none in round 1), then preference phase on D_P^t (anchored
    on this round's instruction phase)."""
    cfg = validate_config(make_tree("hbat", "dpo", **{"schedule.rounds": 3}))
    plan = [(p.kind, p.shard, p.num_shards, p.anchor, p.record_anchor, p.sft_mix) for p in SCHEDULES["hbat"](cfg)]
    assert plan == [
        ("sft", 0, 3, None, True, 0.0),
        ("preference", 0, 3, "sft", True, 0.0),
        ("sft", 1, 3, "preference", True, 0.0),
        ("preference", 1, 3, "sft", True, 0.0),
        ("sft", 2, 3, "preference", True, 0.0),
        ("preference", 2, 3, "sft", True, 0.0),
    ]
    # the ablation keeps the order and shards and drops every anchor
    alt = [(p.kind, p.shard, p.anchor, p.record_anchor) for p in SCHEDULES["alternating"](cfg)]
    assert alt == [(k, s, None, False) for k, s, *_ in plan]
    # ewc.method none turns HBAT into the ablation too
    cfg.ewc.method = "none"
    assert [(p.anchor, p.record_anchor) for p in SCHEDULES["hbat"](cfg)] == [(None, False)] * 6


def test_sft_warmup_precedes_the_schedule(make_tree):
    """schedule.sft_warmup_steps: one SFT stage on all instruction data, then the schedule unchanged."""
    from hbat.orchestrator.schedules import build_plan

    cfg = validate_config(make_tree("hbat", "dpo", **{"schedule.sft_warmup_steps": 3}))
    plan = build_plan(cfg)
    assert (plan[0].kind, plan[0].shard, plan[0].num_shards, plan[0].steps, plan[0].anchor) == ("sft", 0, 1, 3, None)
    assert plan[0].name == "sft-warmup"
    assert _unmarked(plan[1:]) == SCHEDULES["hbat"](cfg)
    cfg.schedule.sft_warmup_steps = 0
    assert _unmarked(build_plan(cfg)) == SCHEDULES["hbat"](cfg)


def _lines(origins: list[str]) -> set[int]:
    return {int(o.rsplit("line ", 1)[1]) for o in origins}


def test_hbat_run_follows_order_and_shards(dpo_hbat_run, demo_files):
    """A real run logged the phases in Algorithm 1's order, and phase t of each
    kind trained only on shard t of its file: the t-th contiguous block of the
    (limit-ed) records, blocks disjoint across rounds."""
    res = dpo_hbat_run
    assert [p.name for p in res.plan] == ["sft[1/2]", "preference[1/2]", "sft[2/2]", "preference[2/2]"]
    boundaries = [r["phase"] for r in res.rows if "phase/index" in r]
    assert boundaries == [p.name for p in res.plan]

    # the shard each phase trained on: which source lines it read
    read: dict[str, set[int]] = {}
    for name, log in res.used:
        if log:
            read.setdefault(name, set()).update(_lines(log))
    assert set(read) == {p.name for p in res.plan}, sorted(read)
    limit, T = res.cfg.data.limit, res.cfg.schedule.rounds
    block = limit // T
    expected = {t: set(range(t * block + 1, (t + 1) * block + 1)) for t in range(T)}  # 1-based lines
    for p in res.plan:
        assert read[p.name] <= expected[p.shard], (p.name, sorted(read[p.name]))
        origins = [o for name, log in res.used if name == p.name for o in log]
        src = demo_files["sft"] if p.kind == "sft" else demo_files["preference"]
        assert all(o.startswith(src + ",") for o in origins), (p.name, origins[:2])
    # each of the phase's steps drew one batch from its shard (and nothing else was read)
    for p in res.plan:
        origins = [o for name, log in res.used if name == p.name for o in log]
        steps = [r for r in res.step_rows() if r["phase"] == p.name]
        assert len(steps) == 2 and len(origins) == len(steps) * 2, (p.name, origins)  # batch_size 2

    # EWC as Algorithm 1: no penalty in round 1's instruction phase, penalties after
    pen = {p.name: [r.get("ewc/penalty") for r in res.step_rows() if r["phase"] == p.name] for p in res.plan}
    assert pen["sft[1/2]"] == [None, None]
    for name in ("preference[1/2]", "sft[2/2]", "preference[2/2]"):
        assert all(v is not None and v >= 0 for v in pen[name]), pen
        assert pen[name][0] == pytest.approx(0.0, abs=1e-12)  # first step starts at the anchor
        assert pen[name][1] > 0  # and moves away from it
