"""Checkpoint + ``--resume``: ``hbat train`` is SIGKILLed during HBAT's second
round and resumed; the run ends with the same number of steps as an
uninterrupted one, every phase completed exactly once and in order, the same
final weights, and a final checkpoint transformers can load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hbat.orchestrator.config import validate_config
from hbat.orchestrator.driver import train
from hbat.orchestrator.metrics import read_metrics
from hbat.orchestrator.schedules import SCHEDULES


def _cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "hbat.orchestrator.cli", "train", "--config", str(config), *args]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def _phase_started(run_dir: Path, index: int) -> bool:
    try:
        rows = read_metrics(run_dir)
    except (json.JSONDecodeError, OSError):  # a line being written
        return False
    return any(r.get("phase/index", -1) >= index for r in rows)


def _group_members(pgid: int, wait_s: float) -> list[int]:
    """Live processes still in process group ``pgid`` (waits up to ``wait_s`` for them to go)."""
    deadline = time.time() + wait_s
    while True:
        alive = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getpgid(int(pid)) == pgid and Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z":
                    alive.append(int(pid))
            except (ProcessLookupError, FileNotFoundError, IndexError):
                pass
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.2)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


@pytest.fixture
def tree(make_tree, tmp_path):
    # checkpoint after every step as well as after each phase, so the kill usually
    # lands after a mid-phase checkpoint and the resume continues inside a phase
    return make_tree("hbat", "dpo", name="resumable", **{
        "run.output_dir": str(tmp_path / "killed"), "run.checkpoint_every": 1,
        "sft.steps_per_phase": 3, "preference_loss.steps_per_phase": 4,
    })


def test_sigkill_then_resume(ray_local, tree, tmp_path):
    cfg = validate_config(tree)
    plan = SCHEDULES["hbat"](cfg)
    names = [p.name for p in plan]
    config = tmp_path / "resumable.yaml"
    config.write_text(yaml.safe_dump(tree))
    run_dir = cfg.run_dir()

    # 1. start, wait for round 2 (phase index 2), SIGKILL the whole process group
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(_cli(config), env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=tmp_path)
        try:
            deadline = time.time() + 240
            while not _phase_started(run_dir, 2):
                assert proc.poll() is None, f"run ended (rc {proc.returncode}) before round 2: " \
                                            f"{(tmp_path / 'killed.log').read_text()[-3000:]}"
                assert time.time() < deadline, "round 2 never started"
                time.sleep(0.02)
        finally:
            _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists(), "the run finished before it was killed"
    assert _group_members(proc.pid, wait_s=15) == [], "processes of the killed run survived"
    killed_at = (run_dir / "checkpoints" / "latest").read_text().strip()
    state = json.loads((run_dir / "checkpoints" / killed_at / "state.json").read_text())
    assert state["phase_index"] >= 2 and state["completed_phases"] == names[: state["phase_index"]]
    assert not state["finished"]

    # 2. resume to the end
    done = subprocess.run(_cli(config, "--resume"), check=False, env=_env(), capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert f"resumed at phase {state['phase_index']} step {state['step_in_phase']}" in done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    final_state = json.loads((run_dir / "checkpoints" / latest / "state.json").read_text())
    assert final_state["completed_phases"] == names  # each phase exactly once, in order
    assert final_state["phase_index"] == len(plan)

    # 3. the same config uninterrupted (in this process, the session's Ray)
    clean_tree = json.loads(json.dumps(tree))
    clean_tree["run"]["output_dir"] = str(tmp_path / "clean")
    clean = train(validate_config(clean_tree))
    assert summary["global_steps"] == clean["global_steps"] == 2 * 3 + 2 * 4
    assert summary["phases"] == clean["phases"] == len(plan)

    # 4. final checkpoint loads with transformers and matches the uninterrupted run
    from transformers import AutoModelForCausalLM

    resumed_model = AutoModelForCausalLM.from_pretrained(summary["final_checkpoint"])
    clean_model = AutoModelForCausalLM.from_pretrained(clean["final_checkpoint"])
    for (name, a), (_, b) in zip(resumed_model.state_dict().items(), clean_model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{name} differs after resume")


def test_ctrl_c_stops_without_traceback_and_resumes(ray_local, tree, tmp_path):
    """Ctrl-C (SIGINT to the whole foreground process group, as a terminal sends it)
    during the second phase: the command says it was interrupted and how to go on,
    prints no traceback, exits 130, leaves no process behind, and ``--resume``
    finishes the run from the checkpoint it left."""
    cfg = validate_config(tree)
    config = tmp_path / "interrupted.yaml"
    config.write_text(yaml.safe_dump(tree))
    run_dir = cfg.run_dir()
    log_file = tmp_path / "interrupted.log"
    with open(log_file, "w") as log:
        proc = subprocess.Popen(_cli(config), env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=tmp_path)
        try:
            deadline = time.time() + 240
            while not _phase_started(run_dir, 1):
                assert proc.poll() is None, f"run ended (rc {proc.returncode}) early: {log_file.read_text()[-3000:]}"
                assert time.time() < deadline, "phase 2 never started"
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
    out = log_file.read_text()
    assert proc.returncode == 130, out[-3000:]
    assert "hbat train: interrupted. The latest complete checkpoint is on disk; add --resume" in out
    assert "Traceback" not in out, out[-3000:]
    assert _group_members(proc.pid, wait_s=15) == [], "processes of the interrupted run survived"
    assert not (run_dir / "summary.json").exists()

    done = subprocess.run(_cli(config, "--resume"), check=False, env=_env(), capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "resumed at phase" in done.stderr
    assert json.loads((run_dir / "summary.json").read_text())["global_steps"] == 2 * 3 + 2 * 4
