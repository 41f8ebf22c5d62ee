"""A bf16 training forward on a CPU runs attention with the math kernel
(faster there for short sequences, ``models/cpu_attention.py``); inference,
fp32 and long sequences keep torch's flash kernel, and the kernel does not
change what the step computes beyond bf16 rounding."""

from __future__ import annotations

import random

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from hbat.actors.policy import LossPart, PolicyWorker
from hbat.models import load_tokenizer, make_tiny_checkpoint
from hbat.models.cpu_attention import MATH_MAX_KEYS, training_attention
from hbat.models.precision import cpu_supports_bf16
from hbat.orchestrator.data import collate_sft

FLASH = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH = "aten::_scaled_dot_product_attention_math"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("attn") / "tiny", seed=0))


def _batch(tiny, n_resp=(5, 9, 3)):
    rng = random.Random(0)
    rows = [{"input_ids": [rng.randrange(5, 200) for _ in range(4 + n)], "loss_mask": [0] * 4 + [1] * n} for n in n_resp]
    return collate_sft(rows, load_tokenizer(tiny).pad_token_id)


def _kernels(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key in (FLASH, MATH)}


def test_bf16_training_step_uses_math_kernel_and_inference_keeps_flash(tiny):
    w = PolicyWorker(tiny, precision="bf16-pure", seed=0, torch_threads=1)
    batch = _batch(tiny)
    w.begin_phase("sft", {"lr": 1e-3}, 4)
    assert _kernels(lambda: w.train_step([LossPart("sft", batch)])) == {MATH}
    assert _kernels(lambda: w.sequence_logps(batch)) == {FLASH}  # no grad: forward-only is faster with flash


def test_bf16_mixed_training_step_uses_math_kernel_where_autocast_runs(tiny):
    w = PolicyWorker(tiny, precision="bf16-mixed", seed=0, torch_threads=1)
    w.begin_phase("sft", {"lr": 1e-3}, 4)
    # without native bf16 the CPU computes bf16-mixed in fp32 (models/precision.py): flash stays
    expected = {MATH} if cpu_supports_bf16() else {FLASH}
    assert _kernels(lambda: w.train_step([LossPart("sft", _batch(tiny))])) == expected


def test_fp32_training_step_keeps_flash(tiny):
    w = PolicyWorker(tiny, precision="fp32", seed=0, torch_threads=1)
    w.begin_phase("sft", {"lr": 1e-3}, 4)
    assert _kernels(lambda: w.train_step([LossPart("sft", _batch(tiny))])) == {FLASH}


def test_kernel_choice_follows_length_device_and_dtype():
    q = torch.randn(2, 2, 8, 16, dtype=torch.bfloat16, requires_grad=True)

    def attend():
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()

    def under(*args):
        def run():
            with training_attention(*args):
                attend()
        return _kernels(run)

    assert under("cpu", True, 8) == {MATH}
    assert under("cpu", True, MATH_MAX_KEYS + 1) == {FLASH}
    assert under("cpu", False, 8) == {FLASH}
    assert under("meta", True, 8) == {FLASH}  # not a CPU: torch's own choice


def test_math_kernel_matches_flash_within_bf16_rounding(tiny):
    """Same weights, same batch: the math and the flash kernel give the same
    training loss and gradients up to bf16 rounding."""
    batch = _batch(tiny)
    results = []
    for forced in (None, "flash"):
        w = PolicyWorker(tiny, precision="bf16-pure", seed=0, torch_threads=1)
        if forced:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                logps = w._logps(batch["input_ids"], batch["attention_mask"], batch["loss_mask"][:, 1:])[0]
        else:
            logps = w._logps(batch["input_ids"], batch["attention_mask"], batch["loss_mask"][:, 1:])[0]
        logps.sum().backward()
        grad = torch.cat([p.grad.float().flatten() for p in w.model.parameters() if p.grad is not None])
        results.append((logps.detach().float(), grad))
    (lp_math, g_math), (lp_flash, g_flash) = results
    assert torch.allclose(lp_math, lp_flash, atol=3e-2, rtol=0)
    assert torch.nn.functional.cosine_similarity(g_math, g_flash, dim=0) > 0.999
