"""The run folder on the good paths: ``--overwrite`` deletes the earlier run
(and only a folder that holds one), ``--resume`` accepts the changes that do
not alter what is trained (logging, resources, a moved run folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import hbat.orchestrator.driver as driver_mod
from hbat.orchestrator.cli import main
from hbat.orchestrator.config import dump_config, validate_config


class _Reached(Exception):
    """Driver.start was reached: every check passed."""


@pytest.fixture
def stop_at_start(monkeypatch):
    def start(self):
        raise _Reached(self.run_dir)

    monkeypatch.setattr(driver_mod.Driver, "start", start)


def _earlier_run(tree: dict, finished: bool = True) -> Path:
    run = Path(tree["run"]["output_dir"]) / tree["run"]["name"]
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(validate_config(json.loads(json.dumps(tree)))))
    (run / "metrics.jsonl").write_text('{"step": 1, "old": true}\n')
    if finished:
        (run / "summary.json").write_text("{}")
    return run


def test_overwrite_deletes_the_earlier_run(make_tree, tmp_path, stop_at_start):
    tree = make_tree("hbat", "dpo")
    run = _earlier_run(tree)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tree))
    with pytest.raises(_Reached):
        main(["train", "--config", str(config), "--overwrite"])
    assert not (run / "summary.json").exists()
    assert "old" not in (run / "metrics.jsonl").read_text()  # a fresh metrics file, not appended to


def test_a_folder_without_a_run_is_used_and_never_deleted(make_tree, tmp_path, stop_at_start):
    tree = make_tree("hbat", "dpo")
    run = Path(tree["run"]["output_dir"]) / tree["run"]["name"]
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tree))
    with pytest.raises(_Reached):
        main(["train", "--config", str(config), "--overwrite"])
    assert (run / "notes.txt").read_text() == "mine"


def test_resume_accepts_changes_that_do_not_alter_training(make_tree, tmp_path, stop_at_start):
    tree = make_tree("hbat", "dpo")
    old = _earlier_run(tree, finished=False)
    moved = tmp_path / "moved" / "runs"
    moved.mkdir(parents=True)
    old.rename(moved / old.name)
    tree["run"]["output_dir"] = str(moved)
    tree["logging"]["progress"] = True
    tree["resources"]["torch_threads"] = 2
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tree))
    with pytest.raises(_Reached):  # no checkpoint yet: the driver starts the schedule over
        main(["train", "--config", str(config), "--resume"])
