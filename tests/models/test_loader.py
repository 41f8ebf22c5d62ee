import json

import pytest

from hbat.orchestrator.config import LoraConfig
import torch

from hbat.models import (
    critic_values,
    load_causal_lm,
    load_critic,
    load_reward_model,
    load_tokenizer,
    resolve_dtype,
    reward_scores,
    save_checkpoint,
)
from hbat.models.atomic import atomic_dir
from hbat.models.scoring import last_token_index


def _batch(tok):
    enc = tok(["hello there the sea", "one two"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_tiny_causal_lm_roundtrip_identical_logits(tiny_checkpoint, tmp_path):
    tok = load_tokenizer(tiny_checkpoint)
    model = load_causal_lm(tiny_checkpoint)
    ids, am = _batch(tok)
    before = model(input_ids=ids, attention_mask=am).logits
    save_checkpoint(model, tok, tmp_path / "ck", extra={"step": 3})
    again = load_causal_lm(str(tmp_path / "ck"))
    after = again(input_ids=ids, attention_mask=am).logits
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert json.loads((tmp_path / "ck" / "hbat.json").read_text()) == {"step": 3}


def test_lora_is_merged_on_save_and_loads_without_peft(tiny_checkpoint, tmp_path):
    tok = load_tokenizer(tiny_checkpoint)
    model = load_causal_lm(tiny_checkpoint, trainable=True, lora=LoraConfig(r=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # move the adapters away from their zero init so merging matters
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    model.eval()
    ids, am = _batch(tok)
    before = model(input_ids=ids, attention_mask=am).logits
    save_checkpoint(model, tok, tmp_path / "merged")
    plain = load_causal_lm(str(tmp_path / "merged"))
    assert not hasattr(plain, "peft_config")
    torch.testing.assert_close(plain(input_ids=ids, attention_mask=am).logits, before, rtol=1e-4, atol=1e-5)
    base = load_causal_lm(tiny_checkpoint)
    assert not torch.allclose(base(input_ids=ids, attention_mask=am).logits, before)


def test_frozen_models_have_no_trainable_params(tiny_checkpoint):
    ref = load_causal_lm(tiny_checkpoint)
    assert not any(p.requires_grad for p in ref.parameters())
    pol = load_causal_lm(tiny_checkpoint, trainable=True)
    assert all(p.requires_grad for p in pol.parameters())


def test_reward_pools_last_real_token_with_left_or_right_padding(tiny_checkpoint):
    rm = load_reward_model(tiny_checkpoint)
    ids = torch.tensor([[11, 12, 13, 14]])
    full = reward_scores(rm, ids, torch.ones_like(ids))
    pad = rm.config.pad_token_id
    right = reward_scores(rm, torch.tensor([[11, 12, 13, 14, pad, pad]]), torch.tensor([[1, 1, 1, 1, 0, 0]]))
    left = reward_scores(rm, torch.tensor([[pad, pad, 11, 12, 13, 14]]), torch.tensor([[0, 0, 1, 1, 1, 1]]))
    torch.testing.assert_close(full, right, atol=1e-5, rtol=1e-5)
    # left padding shifts positions for rotary embeddings only through position ids;
    # transformers derives them from the mask, so the score matches too
    assert left.shape == (1,)
    assert torch.equal(last_token_index(torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])), torch.tensor([2, 3]))


def test_reward_head_roundtrip(tiny_checkpoint, tmp_path):
    tok = load_tokenizer(tiny_checkpoint)
    rm = load_reward_model(tiny_checkpoint)
    ids, am = _batch(tok)
    s = reward_scores(rm, ids, am)
    save_checkpoint(rm, tok, tmp_path / "rm")
    torch.testing.assert_close(reward_scores(load_reward_model(str(tmp_path / "rm")), ids, am), s)


def test_critic_values_shape_and_grad(tiny_checkpoint):
    critic = load_critic(tiny_checkpoint, trainable=True)
    ids = torch.tensor([[11, 12, 13, 14, 15]])
    v = critic_values(critic, ids, torch.ones_like(ids))
    assert v.shape == (1, 4)
    v.sum().backward()
    assert critic.score.weight.grad is not None and critic.score.weight.grad.abs().sum() > 0


def test_bad_dtype_is_named():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "ck"
    with atomic_dir(target) as d:
        (d / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "a").write_text("new")
            raise RuntimeError("crash mid-save")
    assert (target / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


@pytest.mark.slow
def test_embedded_smollm2_offline_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_causal_lm("smollm2-135m")
    tok = load_tokenizer("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
    logits = model(**ids).logits
    save_checkpoint(model, tok, tmp_path / "smol")
    again = load_causal_lm(str(tmp_path / "smol"))
    torch.testing.assert_close(again(**ids).logits, logits, rtol=0, atol=0)


def test_output_projection_gets_a_contiguous_input_and_the_same_logits(tiny_checkpoint):
    """Generation's prefill projects ``hidden[:, -1:, :]``, a strided view; torch's
    CPU bf16 linear then copies a batch-broadcast weight (1.4 s per call on the
    135M model). The loader's pre-hook hands the head a contiguous input."""
    import torch

    from hbat.models import load_causal_lm

    model = load_causal_lm(tiny_checkpoint, dtype="bfloat16")
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    ids = torch.randint(0, model.config.vocab_size, (3, 7))
    with torch.no_grad():
        last = model(input_ids=ids, logits_to_keep=1).logits
        full = model(input_ids=ids).logits
    assert seen == [True, True]
    torch.testing.assert_close(last[:, 0], full[:, -1])
