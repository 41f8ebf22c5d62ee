"""The real ``PolicyWorker`` (no Ray) on a tiny random Llama: each test pins a
behaviour a review found broken, and fails on the code that had it.

Batches are random token rows; a prompt of 4 tokens and a response of
varying length, so micro-batches and pairs have unequal token counts.
"""

from __future__ import annotations

import random

import pytest
import torch

from hbat.actors.policy import LossPart, PolicyWorker
from hbat.actors.rollout import build_experience
from hbat.models import load_tokenizer, make_tiny_checkpoint
from hbat.objectives import movement_importance, normalize_importance, token_logprobs
from hbat.orchestrator.config import EWCConfig
from hbat.orchestrator.data import collate_pairwise, collate_sft

PROMPT = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("policy") / "tiny", seed=0))


@pytest.fixture(scope="module")
def pad(tiny):
    return load_tokenizer(tiny).pad_token_id


def _row(rng, n_resp, vocab=200):
    ids = [rng.randrange(5, vocab) for _ in range(PROMPT + n_resp)]
    return ids, [0] * PROMPT + [1] * n_resp


def sft_batch(pad, lengths, seed=0):
    rng = random.Random(seed)
    ex = []
    for n in lengths:
        ids, mask = _row(rng, n)
        ex.append({"input_ids": ids, "loss_mask": mask})
    return collate_sft(ex, pad)


def pair_batch(pad, n_pairs=4, seed=0):
    rng = random.Random(seed)
    ex = []
    for i in range(n_pairs):
        c, cm = _row(rng, 3 + i)
        r, rm = _row(rng, 6 - i % 3)
        r[:PROMPT] = c[:PROMPT]
        ex.append({"chosen_input_ids": c, "chosen_loss_mask": cm, "rejected_input_ids": r, "rejected_loss_mask": rm})
    return collate_pairwise(ex, pad)


def worker(tiny, **kw):
    return PolicyWorker(tiny, seed=0, torch_threads=1, **kw)


def _block_params(state: dict) -> dict:
    return {k: v for k, v in state.items() if ".layers." in k and "norm" not in k}


# -------------------------------------------------------------------- preference path
def test_dpo_steps_raise_implicit_reward_accuracy(tiny, pad):
    """A few DPO steps must prefer the chosen rows: swapping chosen and rejected
    anywhere in the policy's preference path turns the margin negative."""
    w = worker(tiny)
    batch = pair_batch(pad)
    batch["ref_logps"] = w.sequence_logps(batch)
    w.begin_phase("preference", {"lr": 3e-3}, 8)
    stats = [w.train_step([LossPart("pairwise", batch, options={"loss": "dpo", "beta": 0.5})]) for _ in range(8)]
    assert stats[0]["pref/margin"] == pytest.approx(0.0, abs=1e-5)  # starts at the reference
    assert stats[-1]["pref/reward_accuracy"] == 1.0
    assert stats[-1]["pref/margin"] > 0.5
    assert stats[-1]["pref/loss"] < stats[0]["pref/loss"]
    lp = w.sequence_logps(batch)
    n = len(lp) // 2
    assert torch.all((lp[:n] - batch["ref_logps"][:n]) > (lp[n:] - batch["ref_logps"][n:]))


def test_slic_uses_its_own_beta_unless_set(tiny, pad):
    """The registry default (SLiC beta = 1, delta = 1) applies; preference_loss.beta is not forced on it."""
    from hbat.objectives import get_preference_loss

    spec = get_preference_loss("slic")
    assert spec.defaults["beta"] == 1.0 and "delta" in spec.option_names() and "reg_weight" in spec.option_names()
    w = worker(tiny)
    batch = pair_batch(pad)
    batch["ref_logps"] = w.sequence_logps(batch)
    w.begin_phase("preference", {"lr": 1e-9}, 1)
    lp = w.sequence_logps(batch)
    n = len(lp) // 2
    s = w.train_step([LossPart("pairwise", batch, options={"loss": "slic", **spec.defaults})])
    assert s["pref/hinge"] == pytest.approx(float(torch.clamp(1.0 - (lp[:n] - lp[n:]), min=0).mean()), rel=1e-4)


def test_ipo_average_logps_option(tiny, pad):
    """IPO on per-token mean log-probs (registry default, as TRL) vs summed."""
    w = worker(tiny)
    batch = pair_batch(pad)
    batch["ref_logps"] = torch.zeros(len(batch["input_ids"]))
    lp = w.sequence_logps(batch)
    ntok = batch["loss_mask"][:, 1:].sum(1).float()
    n = len(lp) // 2
    w.begin_phase("preference", {"lr": 1e-9}, 2)
    for average in (True, False):
        x = lp / ntok if average else lp
        h = x[:n] - x[n:]
        expect = float(((h - 1 / (2 * 0.1)) ** 2).mean())
        s = w.train_step([LossPart("pairwise", batch, options={"loss": "ipo", "beta": 0.1, "average_logps": average})])
        assert s["pref/loss"] == pytest.approx(expect, rel=1e-3), average


# ---------------------------------------------------------------- gradient accumulation
@pytest.mark.parametrize("kind", ["sft", "pairwise"])
def test_grad_accum_does_not_change_the_step(tiny, pad, kind):
    """Micro-batches of unequal token counts: the accumulated gradient (its norm,
    before clipping) and the reported loss equal the one-batch step's."""
    if kind == "sft":
        batch = sft_batch(pad, [1, 9, 2, 12, 3, 3])
        opts = {}
    else:
        batch = pair_batch(pad, n_pairs=6)
        opts = {"loss": "dpo", "beta": 0.1}
    out = {}
    for k in (1, 3):
        w = worker(tiny)
        if kind != "sft":
            batch["ref_logps"] = w.sequence_logps(batch) - 0.3 * torch.arange(len(batch["input_ids"]))
        w.begin_phase("sft", {"lr": 1e-4, "grad_accum": k, "grad_clip": 1e9}, 1)
        out[k] = w.train_step([LossPart(kind, batch, options=opts)])
    loss_key = "sft/loss" if kind == "sft" else "pref/loss"
    assert out[3]["optim/grad_norm"] == pytest.approx(out[1]["optim/grad_norm"], rel=1e-4)
    assert out[3][loss_key] == pytest.approx(out[1][loss_key], rel=1e-5)


# --------------------------------------------------------------------------- PPO path
def _experience(pad, temperature=1.0, n=4):
    rng = random.Random(3)
    prompts = [[rng.randrange(5, 200) for _ in range(PROMPT)] for _ in range(n // 2)]
    responses = [[[rng.randrange(5, 200) for _ in range(2 + j + i)] for j in range(2)] for i in range(n // 2)]
    exp = build_experience(prompts, responses, pad)
    return exp.with_fields(temperature=temperature)


def test_first_ppo_step_ratio_is_one_with_lora_dropout(tiny, pad):
    """LoRA dropout 0.5: with dropout disabled (the default) the trained forward
    equals the eval-mode old-policy forward, so the first ratio is exactly 1."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.5}
    for disable, zero in ((True, True), (False, False)):
        w = worker(tiny, lora=lora, disable_dropout=disable)
        with torch.no_grad():  # B = 0 at init would hide the dropout on the adapter's input
            for n, p in w.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        exp = _experience(pad)
        exp = exp.with_fields(logprobs=w.logprobs(exp), advantages=torch.ones(exp.action_mask.shape) * exp.action_mask)
        w.begin_phase("preference", {"lr": 1e-4}, 1)
        s = w.train_step([LossPart("ppo", exp)])
        assert (s["ppo/approx_kl"] == 0.0) is zero, (disable, s["ppo/approx_kl"])


def test_update_without_stored_old_logprobs_equals_update_with_them(tiny, pad):
    """One update on a fresh batch (what PPOStep sends when the batch gets no
    second update): the training forward's detached log-probs as the old ones
    give exactly the step that stored old-policy log-probs give."""
    exp = _experience(pad)
    adv = torch.linspace(-1, 1, len(exp))[:, None] * exp.action_mask
    start = {k: v.clone() for k, v in worker(tiny).model.state_dict().items()}
    weights = []
    for stored in (True, False):
        w = worker(tiny)
        w.begin_phase("preference", {"lr": 1e-2}, 1)
        w.train_step([LossPart("ppo", exp.with_fields(advantages=adv, logprobs=w.logprobs(exp) if stored else None))])
        weights.append(w.model.state_dict())
    assert max(float((weights[1][k] - start[k]).abs().max()) for k in start) > 1e-4  # it learned
    for k in start:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=0, atol=1e-6)


def test_logprobs_use_the_sampling_temperature(tiny, pad):
    w = worker(tiny)
    exp = _experience(pad, temperature=0.7)
    with torch.no_grad():
        logits = w.model(input_ids=exp.sequences, attention_mask=exp.attention_mask).logits
    expect = token_logprobs(logits / 0.7, exp.sequences)
    m = exp.action_mask.bool()  # response positions: only these are projected through the vocabulary
    assert torch.allclose(w.logprobs(exp)[m], expect[m], atol=1e-5)
    assert not torch.allclose(w.logprobs(exp.with_fields(temperature=1.0))[m], expect[m], atol=1e-3)


# -------------------------------------------------------------------------- precision
def _changed_fraction(tiny, pad, tmp_path, precision):
    from safetensors.torch import load_file

    w = worker(tiny, precision=precision)
    start = _block_params({k: v.clone() for k, v in w.model.state_dict().items()})
    w.begin_phase("sft", {"lr": 1e-5}, 50)
    for i in range(50):
        w.train_step([LossPart("sft", sft_batch(pad, [5, 7, 6, 4], seed=i))])
    w.save_pretrained(str(tmp_path / precision))
    saved = _block_params(load_file(str(tmp_path / precision / "model.safetensors")))
    changed = sum(int((saved[k].float() != start[k].float()).sum()) for k in start)
    return changed / sum(v.numel() for v in start.values()), saved


def test_bf16_mixed_keeps_small_updates(tiny, pad, tmp_path):
    """50 SFT steps at lr 1e-5: fp32 master weights (bf16-mixed) move >= 90 % of
    the block weights; pure bf16 rounds most of the same updates away."""
    mixed, saved = _changed_fraction(tiny, pad, tmp_path, "bf16-mixed")
    pure, _ = _changed_fraction(tiny, pad, tmp_path, "bf16-pure")
    assert next(iter(saved.values())).dtype == torch.float32  # the export holds the master weights
    assert mixed >= 0.9, mixed
    assert pure < 0.5 * mixed, (pure, mixed)


def test_bf16_mixed_trains_fp32_weights_and_state(tiny, pad):
    w = worker(tiny, precision="bf16-mixed")
    w.begin_phase("sft", {"lr": 1e-4}, 1)
    w.train_step([LossPart("sft", sft_batch(pad, [3, 4]))])
    assert all(p.dtype == torch.float32 for p in w.model.parameters())
    assert all(v.dtype == torch.float32 for st in w.opt.state.values() for v in st.values() if v.dim() > 0)


def test_lora_export_leaves_the_base_untouched(tiny, pad):
    """50 exports of a bf16 LoRA policy: the frozen base weights stay bit-identical,
    and the export is W + scale * B @ A."""
    w = worker(tiny, precision="bf16-pure", lora={"r": 4, "alpha": 8})
    with torch.no_grad():
        for n, p in w.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a non-trivial adapter
    base = {n: p.detach().clone() for n, p in w.model.named_parameters() if "base_layer" in n}
    for _ in range(50):
        _, state = w.export_weights()
    for n, p in w.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    layer = w.model.base_model.model.model.layers[0].self_attn.q_proj
    expect = layer.base_layer.weight.float() + layer.get_delta_weight("default").float()
    assert torch.allclose(state["model.layers.0.self_attn.q_proj.weight"].float(), expect, atol=1e-2)


# --------------------------------------------------------------------------------- EWC
def _sft_phase(w, pad, ewc, steps=3, seed=0):
    w.begin_phase("sft", {"lr": 1e-3}, steps, None, ewc)
    for i in range(steps):
        w.train_step([LossPart("sft", sft_batch(pad, [4, 6], seed=seed + i))])


def test_anchor_weights_come_from_this_phase_movement(tiny, pad):
    """The anchor's weights are the normalised movement from *this* phase's start
    to its end (taken here from the exports); a stale start snapshot or a
    dropped max_weight changes them."""
    w = worker(tiny)
    # an earlier EWC-recording phase moves the weights first (and took its own
    # start snapshot): reusing that snapshot must show up below
    _sft_phase(w, pad, EWCConfig(method="modified", strength=1.0), seed=100)
    w.end_phase()
    start = {k: v.clone() for k, v in w.export_weights()[1].items()}
    ewc = EWCConfig(method="modified", strength=2.0, normalize="max", max_weight=7.5)
    _sft_phase(w, pad, ewc)
    w.end_phase()
    end = w.export_weights()[1]
    weights = w.anchor_weights("sft")
    names = [n for n in weights if n in start]
    assert len(names) == len(weights)
    expect = normalize_importance(movement_importance({n: start[n] for n in names}, end), "max", 7.5)
    assert max(weights.values()) == pytest.approx(7.5)
    for n in names:
        assert weights[n] == pytest.approx(expect[n], rel=1e-6, abs=1e-12), n


def test_lora_delta_penalty_is_invariant_to_factor_rescaling(tiny, pad):
    """ewc.lora_penalty delta anchors scale * B @ A: rescaling A by c and B by 1/c
    leaves the weights and so the penalty unchanged; anchoring the factors does not."""
    for mode, invariant in (("delta", True), ("factors", False)):
        w = worker(tiny, lora={"r": 4, "alpha": 8})
        with torch.no_grad():
            for n, p in w.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        _sft_phase(w, pad, EWCConfig(method="modified", strength=1.0, lora_penalty=mode))
        w.end_phase()
        names = list(w.anchor_weights("sft"))
        assert all(n.endswith(".lora_delta") for n in names) == (mode == "delta"), names[:3]
        assert w.ewc_penalty("sft") == 0.0
        with torch.no_grad():
            for n, p in w.model.named_parameters():
                if "lora_A" in n:
                    p.mul_(4.0)
                elif "lora_B" in n:
                    p.div_(4.0)
        pen = w.ewc_penalty("sft")
        assert (pen < 1e-8) is invariant, (mode, pen)


def test_authors_code_variant_accumulates_importance(tiny, pad):
    """ewc.method modified_code: the second SFT phase's anchor carries the first's importance too."""
    w = worker(tiny)
    ewc = EWCConfig(method="modified_code", strength=1.0)
    _sft_phase(w, pad, ewc, seed=0)
    w.end_phase()
    first = dict(w.anchors["sft"].importance)
    start = w.export_weights()[1]
    _sft_phase(w, pad, ewc, seed=10)
    w.end_phase()
    end = w.export_weights()[1]
    own = movement_importance({n: start[n] for n in first}, end)
    for n in first:
        assert w.anchors["sft"].importance[n] == pytest.approx(first[n] + own[n], rel=1e-6), n
    assert sum(w.anchor_weights("sft").values()) == pytest.approx(100.0, rel=1e-6)  # softmax x ewc_max_weight


@pytest.mark.parametrize("kind", ["sft", "ppo", "pairwise"])
def test_fisher_ewc_on_each_phase_objective(tiny, pad, kind):
    """Original EWC's Fisher from the phase's own loss parts (PPO: masked NLL of
    samples, padding and prompt excluded)."""
    w = worker(tiny)
    ewc = EWCConfig(method="fisher", strength=1.0)
    w.begin_phase("preference", {"lr": 1e-3}, 1, None, ewc)
    if kind == "sft":
        parts = [LossPart("sft", sft_batch(pad, [3, 5]))]
    elif kind == "ppo":
        parts = [LossPart("ppo", _experience(pad))]
    else:
        b = pair_batch(pad)
        b["ref_logps"] = w.sequence_logps(b)
        parts = [LossPart("pairwise", b, options={"loss": "dpo", "beta": 0.1})]
    stats = w.end_phase(parts)
    assert stats["ewc/anchored_tensors"] > 0 and stats["ewc/max_weight"] == pytest.approx(1.0)
    if kind == "ppo":
        # padding must not enter: appending pad columns changes nothing
        exp = parts[0].batch
        padded = exp.with_fields(
            sequences=torch.nn.functional.pad(exp.sequences, (0, 3), value=pad),
            attention_mask=torch.nn.functional.pad(exp.attention_mask, (0, 3)),
            action_mask=torch.nn.functional.pad(exp.action_mask, (0, 3)))
        a = w._fisher_loss(LossPart("ppo", exp))[0]
        b = w._fisher_loss(LossPart("ppo", padded))[0]
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
        lp = w.logprobs(exp)
        m = exp.action_mask.bool()
        assert a.item() == pytest.approx(float(-lp[m].mean()), rel=1e-5)
