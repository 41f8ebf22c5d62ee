"""An HBAT run whose policy, critic and reward-model training are 2-rank FSDP2
worker groups spread over two emulated Ray nodes (``ray.cluster_utils.Cluster``), driven through
the ``hbat train`` command as a user would: it finishes, each rank ran on its
own node, every rank wrote its checkpoint shard, and the final export is a
plain Hugging Face folder that transformers loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml


@pytest.fixture
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def test_hbat_ppo_with_sharded_policy_and_critic_on_two_nodes(two_nodes, make_tree, tmp_path, tiny_checkpoint):
    tree = make_tree("hbat", "ppo", **{
        "resources.address": two_nodes.address, "resources.strategy": "SPREAD",
        "resources.policy.replicas": 2, "resources.critic.replicas": 2, "ppo.advantage": "gae",
        "run.checkpoint_every": 1,
        # the reward model is trained first, by a 2-rank group; then 2 replicas score slices
        "model.reward": None, "resources.reward.replicas": 2, "reward_model.max_steps": 2,
    })
    cfg_file = tmp_path / "multinode.yaml"
    cfg_file.write_text(yaml.safe_dump(tree))
    hbat = Path(sys.executable).parent / "hbat"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([str(hbat), "train", "--config", str(cfg_file)], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = Path(tree["run"]["output_dir"]) / tree["run"]["name"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["phases"] == 4

    where = json.loads((run_dir / "placement.json").read_text())
    assert where["policy-0"]["node_id"] != where["policy-1"]["node_id"], where
    assert where["critic-0"]["node_id"] != where["critic-1"]["node_id"], where

    assert where["reward-0"]["node_id"] != where["reward-1"]["node_id"], where
    assert (run_dir / "reward_model" / "model.safetensors").is_file()  # gathered from the group's shards
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    for role in ("policy", "critic"):
        assert sorted(p.name for p in (ckpt / role).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"], role

    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    start = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    moved = max(float((a - b).abs().max()) for a, b in zip(final.state_dict().values(), start.state_dict().values()))
    assert moved > 1e-4  # trained, and exported whole (every tensor has the checkpoint's shape)
    out = final.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


class _Stop(Exception):
    """Raised after the checkpoint that ends the second phase: a run cut short."""


def test_resume_on_a_different_number_of_ranks(ray_local, make_tree, monkeypatch):
    """HBAT-DPO with a 2-rank policy, stopped after its second phase and resumed
    with one unsharded policy, ends at the weights of the uninterrupted 2-rank
    run: the driver's checkpoint (DCP shards, anchors, schedule position)
    reshards on load."""
    from safetensors.torch import load_file

    from hbat.orchestrator.config import validate_config
    from hbat.orchestrator.driver import Driver

    def run(tree, resume=False):
        d = Driver(validate_config(tree), resume=resume)
        try:
            return d.run()
        finally:
            d.shutdown()

    two = {"resources.policy.replicas": 2, "ewc.strength": 50.0}
    whole = make_tree("hbat", "dpo", name="whole", **two)
    run(whole)

    cut = make_tree("hbat", "dpo", name="cut", **two)
    real = Driver._checkpoint

    def checkpoint_then_stop(self):
        real(self)
        if self.state.step_in_phase == 0 and self.state.phase_index == 2:
            raise _Stop()

    monkeypatch.setattr(Driver, "_checkpoint", checkpoint_then_stop)
    with pytest.raises(_Stop):
        run(cut)
    monkeypatch.setattr(Driver, "_checkpoint", real)
    resumed = make_tree("hbat", "dpo", name="cut", **{**two, "resources.policy.replicas": 1})
    summary = run(resumed, resume=True)
    assert summary["phases"] == 4

    out = Path(whole["run"]["output_dir"])
    a, b = load_file(out / "whole" / "final" / "model.safetensors"), load_file(out / "cut" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst


def test_driver_stops_when_a_node_does_not_see_the_run_folder(ray_local, make_tree, tmp_path):
    """An actor whose node has another disk at the run folder's path (emulated:
    its probe lands elsewhere) stops the run with a message naming it."""
    from hbat.actors.training import RunFolderProbe
    from hbat.orchestrator.config import ConfigError, validate_config
    from hbat.orchestrator.roles import Roles
    from hbat.orchestrator.worker_group import WorkerGroup

    elsewhere = tmp_path / "other-disk"

    class OtherDisk(RunFolderProbe):
        def probe(self, folder, name):
            return super().probe(str(elsewhere / Path(folder).name), name)

    ray = ray_local
    roles = Roles(validate_config(make_tree()), None, 0)
    good, bad = ray.remote(RunFolderProbe).remote(), ray.remote(OtherDisk).remote()
    roles.policy = WorkerGroup("policy", [good])
    roles.reference = WorkerGroup("reference", [bad])
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"not on storage every node sees.*reference-0") as info:
        roles.check_shared_folder(run_dir)
    assert "policy-0" not in str(info.value)
    roles.reference = WorkerGroup("reference", [good])
    where = roles.check_shared_folder(run_dir)
    assert set(where) == {"policy-0", "reference-0"} and not (run_dir / ".probe").exists()
