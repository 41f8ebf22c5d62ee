"""``hbat plan`` and its estimator (``orchestrator/memory_plan.py``): arithmetic
on ``config.json`` and the config, no Ray and no model loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hbat.orchestrator.cli import main
from hbat.orchestrator.config import load_config
from hbat.orchestrator.memory_plan import (KNOWN_ARCHITECTURES, ModelShape, estimate, model_shape,
                                           param_count)

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def _role(plan, name):
    return next(r for r in plan.roles if r.role == name)


def _plan(*overrides, gpu_memory_gb=None):
    return estimate(load_config(QUICKSTART, list(overrides)), gpu_memory_gb)


def test_param_count_matches_the_embedded_model():
    """The formula's count of SmolLM2-135M is within 1 % of ``sum(p.numel())`` of the real model."""
    from transformers import AutoModelForCausalLM

    from hbat.models.default import resolve_model_path

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m"))
    real = sum(p.numel() for p in model.parameters())
    estimated = param_count(model_shape("smollm2-135m", "model.policy"))
    assert abs(estimated - real) / real < 0.01, (estimated, real)


def test_known_architecture_sizes():
    """The table's entries give the published sizes (Qwen2.5-7B: 7.61B, Llama-3.1-8B: 8.03B)."""
    qwen = param_count(ModelShape.from_config(KNOWN_ARCHITECTURES["Qwen/Qwen2.5-7B-Instruct"]))
    llama = param_count(ModelShape.from_config(KNOWN_ARCHITECTURES["meta-llama/Llama-3.1-8B-Instruct"]))
    assert abs(qwen / 7.61e9 - 1) < 0.01 and abs(llama / 8.03e9 - 1) < 0.01
    assert model_shape("Qwen/Qwen2.5-7B-Instruct", "model.policy").hidden == 3584


def test_two_replicas_halve_the_sharded_state():
    """Weights + gradients + AdamW state per device at replicas=2 are exactly half of replicas=1."""
    one = _role(_plan(), "policy")
    two = _role(_plan("resources.policy.replicas=2"), "policy")
    assert two.sharded and two.shards == 2 and not one.sharded
    assert two.weights + two.grads + two.optimizer == (one.weights + one.grads + one.optimizer) / 2
    assert two.anchors == one.anchors / 2


def test_gradient_checkpointing_lowers_activations():
    plain = _role(_plan(), "policy")
    ckpt = _role(_plan("model.gradient_checkpointing=true"), "policy")
    assert 0 < ckpt.activations < plain.activations
    assert ckpt.logits == plain.logits  # the logits are not checkpointed


def test_token_budget_caps_the_micro_batch():
    full = _role(_plan(), "policy")
    capped = _role(_plan("sft.optim.max_tokens_per_micro=320", "ppo.optim.max_tokens_per_micro=320"), "policy")
    assert capped.micro_rows == 2 and capped.activations < full.activations


def test_offload_anchors_moves_them_to_host():
    on = _role(_plan(), "policy")
    off = _role(_plan("ewc.offload_anchors=true"), "policy")
    assert on.anchors > 0 and off.anchors == 0
    assert off.host == on.host + on.anchors
    assert any("host memory" in n for n in off.notes)
    assert _role(_plan("ewc.method=none"), "policy").anchors == 0


def test_cpu_offload_moves_sharded_state_to_host():
    p = _role(_plan("resources.fsdp.enabled=true", "resources.fsdp.cpu_offload=true"), "policy")
    assert p.weights == p.grads == p.optimizer == 0 and p.host > 0 and p.activations > 0


def test_colocated_roles_add_up_on_one_device():
    plan = _plan("resources.policy.num_gpus=0.5", "resources.reference.num_gpus=0.5",
                 "resources.colocate=[[policy,reference]]")
    bundle = next(b for b in plan.bundles if b.roles == ["policy", "reference"])
    assert bundle.gpus == 1.0
    assert bundle.device == pytest.approx(_role(plan, "policy").device + _role(plan, "reference").device)


def test_plan_cli_quickstart(capsys):
    assert main(["plan", "--config", QUICKSTART]) == 0
    out = capsys.readouterr().out
    assert "CPU-only config" in out and "policy" in out and "placement group" in out
    assert main(["plan", "--config", QUICKSTART, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    roles = {r["role"] for r in data["roles"]}
    assert {"policy", "reference", "critic", "rollout"} <= roles and data["gpu"] is False


def test_plan_cli_missing_model_folder(capsys, tmp_path):
    assert main(["plan", "--config", QUICKSTART, f"model.policy={tmp_path / 'no_such_model'}"]) == 2
    err = capsys.readouterr().err
    assert "model.policy" in err and "does not exist" in err and "Traceback" not in err


def test_plan_cli_missing_config(capsys, tmp_path):
    assert main(["plan", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_plan_cli_warns_when_a_role_does_not_fit(capsys):
    args = ["plan", "--config", QUICKSTART, "resources.policy.num_gpus=1", "--gpu-memory-gb", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "WARN policy:" in out and "memory per device" in out
    assert main(args + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any(w.startswith("WARN policy") for w in data["warnings"])


def test_7b_recipe_trainable_roles_fit(capsys):
    """configs/compare_tldr_7b.yaml: policy and critic worker groups fit 80 GiB devices
    (the unsharded reward-model stage is the documented exception)."""
    assert main(["plan", "--config", str(REPO / "configs" / "compare_tldr_7b.yaml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    gib = 2**30
    for r in data["roles"]:
        if r["role"] != "reward (training)":
            assert r["device"] <= min(1.0, r["num_gpus"]) * 80 * gib, r["role"]
    assert _sharded(data, "policy") == 4 and _sharded(data, "critic") == 4


def _sharded(data, role):
    r = next(x for x in data["roles"] if x["role"] == role)
    return r["shards"] if r["sharded"] else 1
