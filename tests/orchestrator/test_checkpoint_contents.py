"""What a phase-boundary checkpoint holds, and that resuming from it is exact.

Each tensor is stored once: the anchor just recorded *is* the weights, the
anchor no later phase applies is dropped, the reference is not written when
the plan refreshes it before using it again, and no optimizer state is kept
(policy or critic) between phases. A run resumed from such a checkpoint must
end with the same weights as the uninterrupted run (HBAT-PPO with a critic,
tiny random models, local Ray).
"""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from hbat.actors.sharded_state import read_meta
from hbat.orchestrator.config import validate_config
from hbat.orchestrator.driver import train
from hbat.orchestrator.schedules import build_plan, reference_used_before_refresh, unused_anchors


def _hbat_ppo(make_tree, out, **extra):
    return make_tree("hbat", "ppo", name="ckpt", **{
        "run.output_dir": str(out), "run.keep_checkpoints": 10, "ppo.advantage": "gae", "ppo.kl_coef": 0.1,
        "ppo.steps_per_phase": 2, "ppo.mini_batch_size": 2, **extra})


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def test_plan_rules_on_the_hbat_plan(make_tree, tmp_path):
    cfg = validate_config(_hbat_ppo(make_tree, tmp_path))
    plan = build_plan(cfg)
    assert [(p.kind, p.anchor, p.refresh_reference) for p in plan] == [
        ("sft", None, False), ("preference", "sft", True), ("sft", "preference", False), ("preference", "sft", True)]
    # after each phase: which anchors no later phase applies
    assert [unused_anchors(plan, i) for i in range(4)] == [[], ["sft"], ["preference"], ["preference", "sft"]]
    # a boundary checkpoint resumes at the next phase's step 0; mid-phase at step > 0
    assert [reference_used_before_refresh(plan, i, 0) for i in range(5)] == [False, False, False, False, False]
    assert reference_used_before_refresh(plan, 1, 1) and reference_used_before_refresh(plan, 3, 1)
    assert not reference_used_before_refresh(plan, 2, 1)


def test_boundary_checkpoint_holds_each_tensor_once_and_resumes_exactly(ray_local, make_tree, tmp_path):
    clean = train(validate_config(_hbat_ppo(make_tree, tmp_path / "clean")))
    run_dir = tmp_path / "clean" / "ckpt"
    ckpts = sorted(p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("ckpt-"))
    assert len(ckpts) == 4  # one per phase, all kept (keep_checkpoints: 10)
    after_pref1 = ckpts[1]  # HBAT round 1 done: anchors sft (dead from here) and preference (= the weights)
    meta = read_meta(after_pref1 / "policy")
    assert meta["anchors"]["sft"]["released"] and not meta["anchors"]["sft"]["same_as_weights"]
    assert meta["anchors"]["preference"]["same_as_weights"]
    assert meta["tensor_names"] == {} and not meta["has_optim"]  # weights only
    assert not read_meta(after_pref1 / "critic")["has_optim"]  # the critic's AdamW state lives in its phases
    assert not (after_pref1 / "reference.safetensors").exists()  # phase 4 refreshes it before any use
    stored = FileSystemReader(str(after_pref1 / "policy")).read_metadata().state_dict_metadata
    assert {k.split(".")[0] for k in stored} == {"model"}  # the weights once: no anchor, snapshot or AdamW copy
    assert meta["tensor_groups"] == []

    # resume from that checkpoint (drop the newer ones) and finish the run
    resumed_dir = tmp_path / "resumed" / "ckpt"
    shutil.copytree(run_dir, resumed_dir, ignore=shutil.ignore_patterns("final", "summary.json"))
    for p in ckpts[2:]:
        shutil.rmtree(resumed_dir / "checkpoints" / p.name)
    (resumed_dir / "checkpoints" / "latest").write_text(after_pref1.name)
    resumed = train(validate_config(_hbat_ppo(make_tree, tmp_path / "resumed")), resume=True)
    assert resumed["global_steps"] == clean["global_steps"]
    a, b = _weights(resumed_dir / "final"), _weights(run_dir / "final")
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{k} differs after resume")
    state = json.loads((resumed_dir / "checkpoints" / (resumed_dir / "checkpoints" / "latest").read_text().strip()
                        / "state.json").read_text())
    assert state["finished"] or state["phase_index"] == 4
