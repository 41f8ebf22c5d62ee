"""Damaged run folders and full disks.

* Each way a checkpoint can be damaged (the pointer names a missing folder,
  ``state.json`` empty or corrupt, the policy file missing or cut short, the
  completion marker damaged, the pointer empty) makes ``--resume`` say what
  is wrong and continue from the newest complete checkpoint -- checked on the
  manager directly and end to end through ``hbat train --resume`` on a real
  run; with no complete checkpoint left it stops with exit code 2.
* Saving fsyncs every file before the marker, the folder, and the pointer's
  folder.
* A full disk (``/dev/full``: the real torch and OS errors; and a real tmpfs
  when this process may mount one) ends with "no space left on ... while
  writing checkpoint N; the previous checkpoint ... is intact" and exit 2.
"""

from __future__ import annotations

import json
import re
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from hbat.orchestrator.checkpoint import MARKER, CheckpointError, CheckpointManager, RunState


def _write(folder: Path) -> None:
    """What the actors write: a policy state and a critic state, through the real atomic torch save."""
    from hbat.models.atomic import atomic_torch_save

    atomic_torch_save({"w": torch.arange(1000.0)}, folder / "policy.pt")
    atomic_torch_save({"v": torch.ones(10)}, folder / "critic.pt")


def _saved(tmp_path: Path, steps=(1, 2, 3)) -> CheckpointManager:
    mgr = CheckpointManager(tmp_path / "run", keep=5)
    for s in steps:
        mgr.save(RunState(global_step=s, step_in_phase=s), _write)
    return mgr


def _name(step: int) -> str:
    return f"ckpt-{step:06d}-p000-s{step:05d}"


def _damage(root: Path, how: str, newest: str = _name(3)) -> str:
    """Damage the newest checkpoint the way ``how`` says; returns the expected reason."""
    newest = root / newest
    if how == "pointer-to-missing-folder":  # e.g. a backup that skipped the folder
        shutil.rmtree(newest)
        return f"checkpoint {newest.name} that latest names is not usable: the folder is missing"
    if how == "empty-state":
        (newest / "state.json").write_text("")
        return "state.json is empty"
    if how == "corrupt-state":
        (newest / "state.json").write_text('{"phase_index": 1, "glob')
        return "state.json is not valid JSON"
    if how == "state-not-a-run-state":
        (newest / "state.json").write_text('{"weights": [1, 2]}')
        return "state.json does not hold a run state"
    # the policy's state: one file in the synthetic checkpoints here; a rank's
    # shard of the DCP folder in a real run's
    policy = newest / "policy.pt" if (newest / "policy.pt").exists() else newest / "policy" / "__0_0.distcp"
    rel = policy.relative_to(newest).as_posix()
    if how == "missing-policy":
        policy.unlink()
        return f"{rel} is missing"
    if how == "truncated-policy":
        data = policy.read_bytes()
        policy.write_bytes(data[: len(data) // 2])
        return f"{rel} has"
    if how == "damaged-marker":
        (newest / MARKER).write_text("{")
        return f"its {MARKER} marker is damaged"
    if how == "empty-pointer":
        (root / "latest").write_text("")
        return "is empty"
    raise AssertionError(how)


DAMAGE = ["pointer-to-missing-folder", "empty-state", "corrupt-state", "state-not-a-run-state", "missing-policy",
          "truncated-policy", "damaged-marker", "empty-pointer"]


@pytest.mark.parametrize("how", DAMAGE)
def test_latest_falls_back_to_newest_complete(tmp_path, caplog, how):
    mgr = _saved(tmp_path)
    reason = _damage(mgr.root, how)
    with caplog.at_level(logging.WARNING, logger="hbat.checkpoint"):
        state, folder = mgr.latest()
    expected = _name(3) if how == "empty-pointer" else _name(2)  # an empty pointer: the newest is still fine
    assert folder.name == expected and state.global_step == int(expected[5:11])
    assert reason in caplog.text and f"resuming from the newest complete checkpoint {expected}" in caplog.text


def test_no_complete_checkpoint_is_a_clean_error(tmp_path):
    mgr = _saved(tmp_path, steps=(1, 2))
    for step in (1, 2):
        (mgr.root / _name(step) / "state.json").write_text("")
    with pytest.raises(CheckpointError, match="no complete checkpoint .*state.json is empty"):
        mgr.latest()


def test_no_checkpoint_at_all_is_none(tmp_path):
    assert CheckpointManager(tmp_path / "run", create=False).latest() is None


def test_prune_keeps_complete_checkpoints_and_drops_damaged(tmp_path):
    mgr = _saved(tmp_path, steps=(1, 2, 3))
    (mgr.root / _name(3) / "policy.pt").unlink()  # the newest is damaged; resume from 2, save 4
    mgr.keep = 2
    mgr.save(RunState(global_step=4, step_in_phase=4), _write)
    assert sorted(p.name for p in mgr.root.iterdir() if p.is_dir()) == [_name(2), _name(4)]


def test_save_fsyncs_files_then_folder_then_pointer(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    mgr = CheckpointManager(tmp_path / "run")
    final = mgr.save(RunState(global_step=1), _write)
    names = [Path(p).name for p in synced]
    root = str(mgr.root)
    marker = next(i for i, p in enumerate(synced) if p.endswith("/" + MARKER))
    for f in ("policy.pt", "critic.pt", "state.json"):
        assert any(n == f for n in names[:marker]), f"{f} not fsynced before the marker: {synced}"
    assert any(Path(p).name.startswith(".ckpt-") for p in synced[marker:]), "checkpoint folder not fsynced"
    after_rename = [i for i, p in enumerate(synced) if p == root]
    pointer = next(i for i, n in enumerate(names) if n.startswith(".latest.tmp-"))
    assert after_rename and after_rename[-1] > pointer, f"pointer's folder not fsynced after the pointer: {synced}"
    assert (mgr.root / "latest").read_text() == final.name


def _full_disk_torch(monkeypatch):
    """Every torch.save goes to /dev/full: torch's own error for a full device."""
    real = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real(obj, "/dev/full"))


def _full_disk_os(monkeypatch):
    """state.json's write goes to /dev/full: the OS's ENOSPC."""
    real = Path.write_text

    def write_text(self, data, *a, **k):
        if self.name == "state.json":
            with open("/dev/full", "w") as fh:
                fh.write(data * 1000)
                fh.flush()
        return real(self, data, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)


@pytest.mark.parametrize("fill", [_full_disk_torch, _full_disk_os], ids=["torch-inline-container", "oserror-enospc"])
def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch, fill):
    mgr = _saved(tmp_path, steps=(1,))
    fill(monkeypatch)
    with pytest.raises(CheckpointError) as info:
        mgr.save(RunState(global_step=2, step_in_phase=2), _write)
    msg = str(info.value)
    assert msg == (f"no space left on {mgr.root} while writing checkpoint 2 ({_name(2)}); "
                   f"the previous checkpoint {_name(1)} is intact")
    monkeypatch.undo()
    assert mgr.latest()[1].name == _name(1)
    assert sorted(p.name for p in mgr.root.iterdir()) == [_name(1), "latest"]  # no temp folder left


def test_full_disk_through_a_ray_actor(ray_local, tmp_path):
    """The error arrives wrapped in a RayTaskError, as from the policy actor."""
    import ray

    @ray.remote(num_cpus=0)
    class Saver:
        def save(self, path):
            torch.save({"w": torch.zeros(10000)}, "/dev/full")  # the disk is full

    saver = Saver.remote()
    mgr = CheckpointManager(tmp_path / "run")
    from hbat.orchestrator.checkpoint import wait_all

    with pytest.raises(CheckpointError, match="no space left on .* while writing checkpoint 5 .*no earlier checkpoint"):
        mgr.save(RunState(global_step=5), lambda folder: wait_all([saver.save.remote(str(folder / "policy.pt")),
                                                                   saver.save.remote(str(folder / "critic.pt"))]))
    ray.kill(saver)


# --------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_checkpoint, demo_files, ray_local):
    """A finished sft_only run with a checkpoint after every step (two phases of two steps)."""
    from hbat.orchestrator.cli import main

    tmp = tmp_path_factory.mktemp("damaged")
    tree = {
        "run": {"name": "base", "output_dir": str(tmp / "runs"), "checkpoint_every": 1},
        "model": {"policy": tiny_checkpoint},
        "data": {"sft": demo_files["sft"], "max_prompt_len": 48, "max_len": 128, "limit": 8},
        "resources": {"torch_threads": 1},
        "schedule": {"name": "sft_only", "rounds": 2},
        "sft": {"batch_size": 2, "steps_per_phase": 2, "optim": {"lr": 1e-3}},
        "logging": {"tensorboard": False, "progress": False},
    }
    config = tmp / "base.yaml"
    config.write_text(yaml.safe_dump(tree))
    assert main(["train", "--config", str(config)]) == 0
    return tmp, tree


def _copy_run(base_run, name: str) -> tuple[Path, Path]:
    tmp, tree = base_run
    src = Path(tree["run"]["output_dir"]) / tree["run"]["name"]
    dst = tmp / name / "base"
    shutil.copytree(src, dst)
    t = json.loads(json.dumps(tree))
    t["run"]["output_dir"] = str(tmp / name)
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump(t))
    return dst, config


E2E = ["pointer-to-missing-folder", "empty-state", "corrupt-state", "missing-policy", "truncated-policy"]


@pytest.mark.parametrize("how", E2E)
def test_train_resume_survives_damage(base_run, how, caplog, capsys):
    from hbat.orchestrator.cli import main

    run_dir, config = _copy_run(base_run, how)
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        "ckpt-000003-p001-s00001", "ckpt-000004-p002-s00000"]
    reason = _damage(root, how, "ckpt-000004-p002-s00000")  # the newest: after the last phase
    with caplog.at_level(logging.INFO):
        code = main(["train", "--config", str(config), "--resume"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert reason in caplog.text and "resuming from the newest complete checkpoint ckpt-000003-p001-s00001" in caplog.text
    assert "resumed at phase 1 step 1" in caplog.text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_steps"] == 4
    assert (run_dir / "final" / "config.json").exists()
    assert "Traceback" not in err


def test_train_resume_without_complete_checkpoint_exits_2(base_run, capsys):
    from hbat.orchestrator.cli import main

    run_dir, config = _copy_run(base_run, "all-damaged")
    for folder in (run_dir / "checkpoints").iterdir():
        if folder.is_dir():
            (folder / "state.json").write_text("")
    assert main(["train", "--config", str(config), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and "state.json is empty" in err and "Traceback" not in err


@pytest.fixture
def small_disk(base_run):
    """A real tmpfs mounted as a new run's checkpoints/ folder, 1.5 checkpoints big."""
    tmp, tree = base_run
    src = Path(tree["run"]["output_dir"]) / "base" / "checkpoints" / "ckpt-000003-p001-s00001"
    size = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    mnt = tmp / "full" / "base" / "checkpoints"
    mnt.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.5) // 4096 * 4096}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); /dev/full tests cover the message")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_during_training(base_run, small_disk, capsys):
    from hbat.orchestrator.cli import main

    tmp, tree = base_run
    t = json.loads(json.dumps(tree))
    t["run"]["output_dir"] = str(tmp / "full")
    config = tmp / "full.yaml"
    config.write_text(yaml.safe_dump(t))
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    # which checkpoint overflows depends on their sizes (a phase-boundary one holds no optimizer state)
    m = re.search(rf"error: no space left on {re.escape(str(small_disk))} while writing checkpoint (\d+) "
                  r"\((ckpt-\S+)\); the previous checkpoint (ckpt-\S+) is intact", err)
    assert m, err
    assert "Traceback" not in err
    assert CheckpointManager(small_disk.parent, create=False).latest()[1].name == m.group(3)
    assert not (small_disk / m.group(2)).exists() and int(m.group(1)) >= 2
