"""``hbat compare`` on tiny models (configs/compare_tiny.yaml): three methods, one
seed; the printed table is built from the numbers the runs wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def test_eval_compare_config_validation(tmp_path):
    from hbat.orchestrator.config import ConfigError
    from hbat.orchestrator.evaluation.compare import DEFAULT_METHODS, load_compare_config, parse_method

    cfg, tree = load_compare_config(REPO / "configs" / "compare_small.yaml")
    assert len(DEFAULT_METHODS) == 11  # a config without methods: runs every schedule x preference
    assert [m.name for m in cfg.specs()] == [m for m in DEFAULT_METHODS if not m.startswith(("ptx", "joint"))]
    assert tree["data"]["sft"].endswith("sft.jsonl") and tree["model"]["policy"] == "smollm2-135m"
    assert parse_method("ptx-dpo").schedule == "ptx" and parse_method("sft_only").schedule == "sft_only"
    for bad, msg in ((["methods=[hbat-sgd]"], "method 'hbat-sgd'"), (["baseline=joint-ppo", "methods=[sft_only]"],
                                                                      "baseline 'joint-ppo'"),
                     (["seeds=[]"], "seeds"), (["tabel=[x]"], "tabel: unknown key")):
        with pytest.raises((ConfigError, ValueError), match=msg):
            load_compare_config(REPO / "configs" / "compare_small.yaml", bad)
    # contrasts default to hbat-X vs two_stage-X for the preferences that are run
    cfg, _ = load_compare_config(None, ["methods=[hbat-dpo,two_stage-dpo,hbat-ppo]", "baseline=null"])
    assert cfg.contrast_pairs() == [("hbat-dpo", "two_stage-dpo")]


def test_eval_compare_tiny(ray_local, tiny_checkpoint, tmp_path, capsys):
    from hbat.orchestrator.evaluation.cli import main

    out = tmp_path / "cmp"
    args = ["compare", "--config", str(REPO / "configs" / "compare_tiny.yaml"), "--no-progress",
            f"train.model.policy={tiny_checkpoint}", f"output_dir={out}", f"demo_data={tmp_path / 'demo'}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "compare.json").read_text())
    assert summary["methods"] == ["start", "sft_only", "hbat-ppo", "hbat-dpo"] and summary["seeds"] == [0]
    assert (out / "metrics.png").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0
    assert (out / "compare.md").read_text() in printed

    # every table cell is the mean of what that run's own evaluation wrote
    for method in ("sft_only", "hbat-ppo", "hbat-dpo"):
        run = out / "runs" / method / "seed0"
        written = json.loads((run / "eval" / "results.json").read_text())["metrics"]
        for k in summary["table_metrics"]:
            if k in written:
                assert summary["results"][method][k]["mean"] == pytest.approx(written[k]["mean"])
        assert (run / "final" / "config.json").exists() and not (run / "checkpoints").exists()
        cfg = (run / "config.yaml").read_text()
        assert "name: seed0" in cfg and "seed: 0" in cfg
    assert "winrate/rm" not in summary["results"]["sft_only"]  # the baseline is not compared with itself
    assert summary["results"]["hbat-dpo"]["winrate/rm"]["n"] == 6
    row = next(line for line in printed.splitlines() if line.startswith("| hbat-dpo |"))
    assert f"{summary['results']['hbat-dpo']['reward/score']['mean']:.3f}" in row

    # --resume reuses every finished run and says so; the numbers are unchanged
    assert main(args + ["--resume"]) == 0
    resumed = json.loads((out / "compare.json").read_text())
    assert resumed["results"] == summary["results"]
    assert set(resumed["reused"]) >= {"sft_only/seed0", "hbat-ppo/seed0", "hbat-dpo/seed0", "start"}
    assert "Reused from an earlier invocation" in capsys.readouterr().out
    # without --resume a non-empty output folder is refused
    assert main(args) == 2
    # rerun from scratch with the same seed: every number is reproduced exactly (PPO's sampling included)
    assert main(args + ["--overwrite"]) == 0
    rerun = json.loads((out / "compare.json").read_text())
    assert rerun["reused"] == [] and rerun["results"] == summary["results"]


def test_cluster_recipe_config_is_valid():
    """configs/compare_tldr_7b.yaml (the documented 7B recipe) passes the same
    validation `hbat compare` runs before training, for every method."""
    from hbat.orchestrator.evaluation.compare import Comparison, load_compare_config

    cfg, tree = load_compare_config(REPO / "configs" / "compare_tldr_7b.yaml")
    assert cfg.eval.judge is not None and cfg.eval.judge.model == "gpt-4o"
    comparison = Comparison(cfg, tree)
    for spec in cfg.specs():
        train_cfg = comparison._train_config(spec, cfg.seeds[0], reward="<shared>")
        assert train_cfg.model.policy == "Qwen/Qwen2.5-7B-Instruct" and train_cfg.rollout.backend == "vllm"
        assert train_cfg.schedule.name == spec.schedule and train_cfg.schedule.rounds == 10


def test_compare_runs_both_ewc_variants_side_by_side(make_tree, tmp_path):
    """The paper's EWC (``modified``) and the authors' code (``modified_code``) as two
    methods of one comparison: each method's training config carries its variant."""
    from hbat.orchestrator.evaluation.compare import CompareConfig, Comparison

    cfg = CompareConfig(output_dir=str(tmp_path / "cmp"), baseline=None, include_start=False, contrasts=[],
                        methods=["hbat-dpo", {"name": "hbat-code-dpo", "schedule": "hbat", "preference": "dpo",
                                              "overrides": {"ewc.method": "modified_code"}}])
    comparison = Comparison(cfg, make_tree("hbat", "dpo"))
    paper, code = (comparison._train_config(s, 0, None) for s in comparison.specs)
    assert (paper.ewc.method, code.ewc.method) == ("modified", "modified_code")
    assert (paper.ewc.resolved_max_weight, code.ewc.resolved_max_weight) == (1.0, 100.0)  # the code's default
    assert code.ewc.resolved_normalize == "scaled_softmax" and code.ewc.accumulate
    assert paper.run_dir() != code.run_dir()
