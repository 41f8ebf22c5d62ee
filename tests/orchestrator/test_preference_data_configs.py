"""The shipped preference-data configs: point-wise DPO and ULMA with binary and
continuous labels train through ``hbat train``'s path, and the PopAlign
comparison's methods validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hbat.orchestrator.config import load_config
from hbat.orchestrator.driver import Driver

ROOT = Path(__file__).resolve().parents[2]


def _labels(path: str) -> set[float]:
    return {json.loads(x)["label"] for x in Path(path).read_text().splitlines()}


@pytest.mark.parametrize("config", ["configs/pointwise_dpo.yaml", "configs/ulma.yaml"])
@pytest.mark.parametrize("labels", ["data/demo/pointwise.jsonl", "data/demo/pointwise_graded.jsonl"])
def test_pointwise_configs_load_binary_and_continuous_labels(tiny_checkpoint, config, labels, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(config, [f"model.policy={tiny_checkpoint}", f"data.pointwise={labels}"])
    driver = Driver(cfg)
    driver.load_data()
    points = driver.data.get("pointwise")
    assert driver.runners["preference"].spec.kind == "pointwise" and driver.data.get("preference") is None
    got = {points[i]["label"] for i in range(len(points))}
    assert got <= _labels(labels)
    if "graded" in labels:
        assert any(0.0 < x < 1.0 for x in got)  # continuous
    else:
        assert got == {0.0, 1.0}


def test_make_demo_data_grades_four_answers(tmp_path):
    from hbat.orchestrator.demo_data import GRADES, make_demo_data

    rows = [json.loads(x) for x in make_demo_data(tmp_path)["pointwise_graded"].read_text().splitlines()]
    by_prompt: dict[str, list[float]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r["label"])
    assert all(sorted(v) == sorted(GRADES.values()) for v in by_prompt.values() if len(v) == 4)
    best = [r["response"] for r in rows if r["label"] == 1.0]
    assert all(any(o in b for o in ("Great question!", "Happy to help!", "Sure thing!", "What a fun question!"))
               for b in best)
    # the shipped files are what make-demo-data writes
    assert (ROOT / "data/demo/pointwise_graded.jsonl").read_text() == \
        (tmp_path / "pointwise_graded.jsonl").read_text()


def test_ulma_config_trains_on_continuous_labels(ray_local, tiny_checkpoint, tmp_path, monkeypatch):
    from hbat.orchestrator.driver import train

    monkeypatch.chdir(ROOT)
    cfg = load_config("configs/ulma.yaml", [
        f"model.policy={tiny_checkpoint}", f"run.output_dir={tmp_path}", "data.limit=8", "data.max_prompt_len=48",
        "data.max_len=96", "sft.batch_size=2", "sft.steps_per_phase=1", "preference_loss.batch_size=2", "preference_loss.steps_per_phase=1",
        "resources.torch_threads=1", "logging.tensorboard=false", "logging.progress=false"])
    summary = train(cfg)
    assert summary["global_steps"] == 4
    rows = [json.loads(x) for x in (tmp_path / "ulma" / "metrics.jsonl").read_text().splitlines()]
    pref = [r for r in rows if "pref/loss" in r]
    assert len(pref) == 2 and all(0.0 <= r["pref/positive_fraction"] <= 1.0 and r["pref/loss"] > 0 for r in pref), pref


def test_compare_popalign_config_validates(monkeypatch):
    from hbat.orchestrator.evaluation.compare import Comparison, load_compare_config

    monkeypatch.chdir(ROOT)
    cfg, tree = load_compare_config("configs/compare_popalign.yaml")
    comp = Comparison.__new__(Comparison)
    comp.cfg, comp.base_tree, comp.out = cfg, tree, Path(cfg.output_dir)
    for spec in cfg.specs():
        t = comp._train_config(spec, 0, reward="<shared>")
        assert t.schedule.name == "hbat" and t.schedule.preference == "dpo"
        assert t.preference_loss.steps_per_phase == 4 and t.run.seed == 0
        popalign = "popalign" in spec.name
        assert t.data.preference.endswith("popalign_demo/pairs.jsonl") == popalign
        assert t.preference_loss.curriculum == ("strength_gap" if "curriculum" in spec.name else "none")


def test_popalign_demo_config_selects_all_six_strategies(monkeypatch):
    from hbat.orchestrator.pairs import STRATEGY_NAMES, load_build_config
    from hbat.orchestrator.pairs.builder import check_sources, load_prompts

    monkeypatch.chdir(ROOT)
    cfg = load_build_config("configs/popalign_demo.yaml")
    assert cfg.selected() == list(STRATEGY_NAMES)
    prompts, _ = load_prompts(cfg)
    assert len(prompts) >= 16 and all("reference" in p.meta for p in prompts)
    check_sources(cfg)
    # the weaker models are derived from the embedded one: fewer layers, and noised weights
    assert cfg.models["small"].derive.keep_layers and cfg.models["noisy"].derive.noise
    assert cfg.strategies.leaderboard.ranking == ["base", "noisy", "small"]
