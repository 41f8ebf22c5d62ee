"""``hbat compare`` with ``sweep:``: methods x settings x seeds, the once-only
rule, labels, config errors, and the trade-off plot's points."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]


def _comparison(make_tree, tmp_path, **cfg):
    from hbat.orchestrator.evaluation.compare import CompareConfig, Comparison

    cfg.setdefault("baseline", "sft_only")
    c = CompareConfig(output_dir=str(tmp_path / "cmp"), include_start=False, **cfg)
    comparison = Comparison(c, make_tree("hbat", "dpo"))
    comparison.expand_runs()
    return comparison


def test_sweep_expands_methods_settings_seeds(make_tree, tmp_path):
    """ewc.strength matters only where the plan anchors EWC (hbat), so every other
    method runs once; each swept run's training config carries its value."""
    comparison = _comparison(make_tree, tmp_path, seeds=[0, 1],
                             methods=["sft_only", "two_stage-dpo", "alternating-dpo", "hbat-dpo", "hbat-ppo"],
                             sweep={"ewc.strength": [1, 10, 100]})
    labels = [p.label for p in comparison.points]
    assert labels == ["sft_only", "two_stage-dpo", "alternating-dpo",
                      "hbat-dpo[ewc.strength=1]", "hbat-dpo[ewc.strength=10]", "hbat-dpo[ewc.strength=100]",
                      "hbat-ppo[ewc.strength=1]", "hbat-ppo[ewc.strength=10]", "hbat-ppo[ewc.strength=100]"]
    order = comparison.run_order()
    assert len(order) == 9 * 2 and [s for _, s in order] == [0] * 9 + [1] * 9
    assert order[0][0].label == "sft_only" and order[9][0].label == "sft_only"  # the baseline first in each seed
    dirs = set()
    for point, seed in order:
        train_cfg = comparison._train_config(point.method, seed, None, point.setting)
        assert train_cfg.ewc.strength == point.setting.get("ewc.strength", 10.0)  # 10: make_tree's unswept value
        assert train_cfg.schedule.name == point.method.schedule and train_cfg.run.seed == seed
        dirs.add(str(train_cfg.run_dir()))
    assert len(dirs) == 18  # no two runs share a folder
    assert str(comparison._train_config(comparison.points[4].method, 0, None, comparison.points[4].setting)
               .run_dir()).endswith("runs/hbat-dpo/ewc.strength=10/seed0")
    assert str(comparison._train_config(comparison.points[0].method, 0, None, {}).run_dir()).endswith(
        "runs/sft_only/seed0")


def test_sweep_once_rule_follows_the_config(make_tree, tmp_path):
    """The rule reads the method's training config: with ewc.method none hbat has
    no EWC either; an optimizer key of preference_loss matters to DPO methods
    only; a key outside the step sections matters to every method; a grid sweeps
    each method over the keys that matter to it."""
    from hbat.orchestrator.evaluation.compare import Comparison

    methods = ["sft_only", "two_stage-dpo", "hbat-dpo", "hbat-ppo"]
    c = _comparison(make_tree, tmp_path, methods=methods, sweep={"ewc.strength": [1, 10]})
    off = Comparison(c.cfg, make_tree("hbat", "dpo", **{"ewc.method": "none"}))
    assert [p.label for p in off.expand_runs()] == methods

    lr = _comparison(make_tree, tmp_path, methods=methods, sweep={"preference_loss.optim.lr": [1e-5, 1e-4]})
    assert [p.label for p in lr.points] == ["sft_only", "two_stage-dpo[preference_loss.optim.lr=1e-05]",
                                            "two_stage-dpo[preference_loss.optim.lr=0.0001]",
                                            "hbat-dpo[preference_loss.optim.lr=1e-05]",
                                            "hbat-dpo[preference_loss.optim.lr=0.0001]", "hbat-ppo"]
    assert lr._train_config(lr.points[2].method, 0, None, lr.points[2].setting).preference_loss.optim.lr == 1e-4

    rounds = _comparison(make_tree, tmp_path, methods=["sft_only"], baseline=None,
                         sweep={"schedule": {"rounds": [1, 3]}})  # nested form: read as schedule.rounds
    assert [p.label for p in rounds.points] == ["sft_only[schedule.rounds=1]", "sft_only[schedule.rounds=3]"]

    g = _comparison(make_tree, tmp_path, methods=["two_stage-dpo", "hbat-dpo"], baseline=None,
                    sweep={"ewc.strength": [1, 10], "preference_loss.beta": [0.1, 0.5]})
    assert [p.label for p in g.points] == [
        "two_stage-dpo[preference_loss.beta=0.1]", "two_stage-dpo[preference_loss.beta=0.5]",
        "hbat-dpo[ewc.strength=1,preference_loss.beta=0.1]", "hbat-dpo[ewc.strength=1,preference_loss.beta=0.5]",
        "hbat-dpo[ewc.strength=10,preference_loss.beta=0.1]", "hbat-dpo[ewc.strength=10,preference_loss.beta=0.5]"]


def test_sweep_baseline_and_contrasts_name_runs(make_tree, tmp_path):
    from hbat.orchestrator.config import ConfigError

    sweep = {"ewc.strength": [1, 10]}
    methods = ["sft_only", "two_stage-dpo", "hbat-dpo"]
    # default contrast hbat-dpo vs two_stage-dpo: each hbat-dpo setting against the single two_stage-dpo run
    c = _comparison(make_tree, tmp_path, methods=methods, sweep=sweep)
    assert c.contrast_labels == [("hbat-dpo[ewc.strength=1]", "two_stage-dpo"),
                                 ("hbat-dpo[ewc.strength=10]", "two_stage-dpo")]
    c = _comparison(make_tree, tmp_path, methods=methods, sweep=sweep,
                    contrasts=[["hbat-dpo[ewc.strength=10]", "hbat-dpo[ewc.strength=1]"]])
    assert c.contrast_labels == [("hbat-dpo[ewc.strength=10]", "hbat-dpo[ewc.strength=1]")]
    c = _comparison(make_tree, tmp_path, methods=methods, sweep=sweep, baseline="hbat-dpo[ewc.strength=10]")
    assert c.baseline_label == "hbat-dpo[ewc.strength=10]" and c.run_order()[0][0].label == c.baseline_label
    with pytest.raises(ConfigError, match=r"baseline 'hbat-dpo' runs once per sweep setting"):
        _comparison(make_tree, tmp_path, methods=methods, sweep=sweep, baseline="hbat-dpo")
    with pytest.raises(ConfigError, match=r"contrasts: 'hbat-dpo\[ewc.strength=5\]' is not a run"):
        _comparison(make_tree, tmp_path, methods=methods, sweep=sweep,
                    contrasts=[["hbat-dpo[ewc.strength=5]", "sft_only"]])
    # a bad value names the sweep key and the method
    with pytest.raises(ConfigError, match=r"ewc.strength(.|\n)*sweep.ewc.strength=-1"):
        _comparison(make_tree, tmp_path, methods=methods, sweep={"ewc.strength": [1, -1]})


@pytest.mark.parametrize("sweep, message", [
    ({"ewc.strenght": [1, 10]}, "sweep.ewc.strenght: unknown key: ewc has no field 'strenght'"),
    ({"ewc.strength": []}, "sweep.ewc.strength: empty list"),
    ({"stregth": [1]}, "sweep.stregth: unknown key: train has no field 'stregth'"),
    ({"ewc": [1]}, "sweep.ewc: a section, not a setting"),
    ({"ewc.strength.x": [1]}, "sweep.ewc.strength.x: unknown key"),
    ({"ewc.strength": [1, 1]}, "sweep.ewc.strength: value 1 given twice"),
    ({"run.seed": [1, 2]}, "sweep.run.seed: cannot be swept"),
    ({"schedule.name": ["hbat"]}, "sweep.schedule.name: cannot be swept"),
    ({"ewc.strength": 10}, "sweep.ewc.strength: expected a list of values (got 10)"),
])
def test_sweep_config_errors(sweep, message, tmp_path, capsys, monkeypatch):
    """Through the real CLI: exit 2, one message naming sweep.<key>, no traceback,
    Ray never started (the check is the compare config's own validation)."""
    import ray

    from hbat.orchestrator.cli import main

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init before the config was checked"))
    tree = yaml.safe_load((REPO / "configs" / "compare_tiny.yaml").read_text())
    tree.update(output_dir=str(tmp_path / "cmp"), demo_data=str(tmp_path / "demo"), sweep=sweep)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["compare", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sweep_override_form_and_allowed_keys():
    from hbat.orchestrator.config import ConfigError
    from hbat.orchestrator.evaluation.compare import load_compare_config

    cfg, _ = load_compare_config(REPO / "configs" / "compare_tiny.yaml",
                                 ["sweep.ewc.strength=[1,10]", "sweep.preference_loss.optim.lr=[1.0e-5]"])
    assert cfg.sweep == {"ewc.strength": [1, 10], "preference_loss.optim.lr": [1e-5]}
    cfg, _ = load_compare_config(REPO / "configs" / "compare_sweep.yaml")
    assert cfg.sweep == {"ewc.strength": [1, 10, 100]} and cfg.seeds == [0, 1]
    assert [m.name for m in cfg.specs()] == ["sft_only", "two_stage-dpo", "hbat-dpo"]
    with pytest.raises(ConfigError, match="sweep.ewc.strenght"):
        load_compare_config(REPO / "configs" / "compare_tiny.yaml", ["sweep.ewc.strenght=[1]"])
    # the model itself refuses it too (a config built in Python)
    from pydantic import ValidationError

    from hbat.orchestrator.evaluation.compare import CompareConfig

    with pytest.raises(ValidationError, match=r"sweep.ewc.strength: empty list"):
        CompareConfig(sweep={"ewc": {"strength": []}})


def _fake_summary(seeds_of: dict[str, dict[str, list[float]]], points: dict, sweep: dict, seeds=(0, 1)) -> dict:
    results = {}
    for label, metrics in seeds_of.items():
        results[label] = {k: {"mean": float(np.mean(v)) + 123.0,  # a wrong mean: points must use the seeds
                              "ci_low": float(np.min(v)) - 1, "ci_high": float(np.max(v)) + 1, "seeds": v, "n": 8}
                          for k, v in metrics.items()}
    return {"name": "t", "seeds": list(seeds), "results": results, "points": points, "sweep": sweep,
            "tradeoff": {"x": "demo/exact", "y": "reward/score", "missing": []},
            "all_metrics": ["demo/exact", "reward/score"]}


def test_tradeoff_points_are_seed_means(tmp_path):
    from hbat.orchestrator.evaluation.tradeoff import plot_tradeoff

    per_seed = {
        "start": {"demo/exact": [0.1], "reward/score": [-1.0]},
        "sft_only": {"demo/exact": [0.8, 0.6], "reward/score": [0.0, 0.2]},
        "hbat-dpo[ewc.strength=100]": {"demo/exact": [0.7, 0.5], "reward/score": [0.4, 0.8]},
        "hbat-dpo[ewc.strength=1]": {"demo/exact": [0.2, 0.4], "reward/score": [1.0, 1.4]},
        "hbat-dpo[ewc.strength=10]": {"demo/exact": [0.5, 0.3], "reward/score": [0.9, 0.5]},
    }
    points = {"sft_only": {"method": "sft_only", "setting": {}}}
    for v in (1, 10, 100):  # the sweep's order, not the results' order
        points[f"hbat-dpo[ewc.strength={v}]"] = {"method": "hbat-dpo", "setting": {"ewc.strength": v}}
    out = tmp_path / "tradeoff.png"
    pts = plot_tradeoff(_fake_summary(per_seed, points, {"ewc.strength": [1, 10, 100]}), out)
    assert out.stat().st_size > 0
    assert [p["label"] for p in pts] == ["start", "sft_only", "hbat-dpo[ewc.strength=1]", "hbat-dpo[ewc.strength=10]",
                                         "hbat-dpo[ewc.strength=100]"]
    for p in pts:
        xs, ys = per_seed[p["label"]]["demo/exact"], per_seed[p["label"]]["reward/score"]
        assert p["x"] == pytest.approx(np.mean(xs)) and p["y"] == pytest.approx(np.mean(ys))
        if len(xs) > 1:  # error bars: sd across seeds
            assert p["x_err"] == pytest.approx((np.std(xs, ddof=1),) * 2)
            assert p["y_err"] == pytest.approx((np.std(ys, ddof=1),) * 2)
    assert pts[2]["x"] == pytest.approx(0.3) and pts[4]["y"] == pytest.approx(0.6)
    # with one seed the bars are the bootstrap CI around the mean
    one = plot_tradeoff(_fake_summary({"sft_only": {"demo/exact": [0.5], "reward/score": [0.25]}},
                                      {"sft_only": {"method": "sft_only", "setting": {}}}, {}, seeds=(0,)),
                        tmp_path / "one.png")
    assert one == [dict(one[0], x=0.5, y=0.25, x_err=(1.0, 1.0), y_err=(1.0, 1.0))]


def test_tradeoff_without_sweep_and_axes():
    from hbat.orchestrator.evaluation.tradeoff import TradeoffConfig, tradeoff_points

    results = {m: {"rouge/rougeL": {"seeds": [0.1 * i, 0.3 * i]}, "winrate/rm": {"seeds": [0.5, 0.5 + i]}}
               for i, m in enumerate(["sft_only", "two_stage-dpo", "hbat-dpo"], 1)}
    points = {m: {"method": m, "setting": {}} for m in results}
    pts = tradeoff_points(results, points, "rouge/rougeL", "winrate/rm")
    assert [(p["method"], p["x"], p["y"]) for p in pts] == [
        ("sft_only", pytest.approx(0.2), pytest.approx(1.0)), ("two_stage-dpo", pytest.approx(0.4), pytest.approx(1.5)),
        ("hbat-dpo", pytest.approx(0.6), pytest.approx(2.0))]
    # defaults: the instruction metric the demo task has, else ROUGE; the reward model's score, else win rate
    assert TradeoffConfig().resolve(["demo/exact", "rouge/rougeL", "reward/score"]) == {
        "x": "demo/exact", "y": "reward/score", "missing": []}
    assert TradeoffConfig().resolve(["rouge/rougeL", "winrate/rm"]) == {"x": "rouge/rougeL", "y": "winrate/rm",
                                                                          "missing": []}
    assert TradeoffConfig(x="kl/seq").resolve(["demo/exact", "reward/score"]) == {
        "x": None, "y": "reward/score", "missing": ["kl/seq"]}


def test_eval_compare_tiny_sweep(ray_local, tiny_checkpoint, tiny_reward_checkpoint, tmp_path, capsys):
    """One comparison with a 2-value sweep goes through end to end: sft_only
    once (no EWC in its plan), hbat-dpo per ewc.strength; the table, the
    contrasts and the trade-off plot carry the labels."""
    from hbat.orchestrator.evaluation.cli import main

    out = tmp_path / "cmp"
    args = ["compare", "--config", str(REPO / "configs" / "compare_tiny.yaml"), "--no-progress",
            f"train.model.policy={tiny_checkpoint}", f"output_dir={out}", f"demo_data={tmp_path / 'demo'}",
            f"reward_model={tiny_reward_checkpoint}",  # given: no reward-model training
            "methods=[sft_only,hbat-dpo]", "sweep.ewc.strength=[1,10]", "include_start=false",
            "contrasts=[[hbat-dpo, sft_only]]", "eval.suites=[length,reward,winrate,demo]", "eval.limit=4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "compare.json").read_text())
    labels = ["sft_only", "hbat-dpo[ewc.strength=1]", "hbat-dpo[ewc.strength=10]"]
    assert summary["methods"] == labels and summary["sweep"] == {"ewc.strength": [1, 10]}
    for label in labels:
        assert any(line.startswith(f"| {label} |") for line in printed.splitlines())
    assert "run once, as the sweep cannot change their training: sft_only" in printed
    assert [(c["a"], c["b"]) for c in summary["contrasts"]] == [(labels[1], "sft_only"), (labels[2], "sft_only")]
    for v in (1, 10):
        run = out / "runs" / "hbat-dpo" / f"ewc.strength={v}" / "seed0"
        assert yaml.safe_load((run / "config.yaml").read_text())["ewc"]["strength"] == v
        written = json.loads((run / "eval" / "results.json").read_text())["metrics"]
        assert summary["results"][f"hbat-dpo[ewc.strength={v}]"]["reward/score"]["mean"] == pytest.approx(
            written["reward/score"]["mean"])
        assert summary["results"][f"hbat-dpo[ewc.strength={v}]"]["winrate/rm"]["n"] == 4  # against sft_only
    assert not (out / "runs" / "sft_only" / "ewc.strength=1").exists()
    assert (out / "tradeoff.png").stat().st_size > 0
    t = summary["tradeoff"]
    assert (t["x"], t["y"]) == ("demo/exact", "reward/score")
    assert [p["label"] for p in t["points"]] == labels
    for p in t["points"]:
        assert p["x"] == pytest.approx(summary["results"][p["label"]]["demo/exact"]["mean"])
        assert p["y"] == pytest.approx(summary["results"][p["label"]]["reward/score"]["mean"])
