"""Load policy / reference / reward / critic models and tokenizers.

Every role loads through here so dtype, device, LoRA and the embedded default
behave identically whether the model sits in the driver, a Ray actor, or a
Serve replica. Checkpoints are plain Hugging Face folders (safetensors) so
``transformers`` can load our outputs without us.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING
from pathlib import Path

import torch

from hbat.models.atomic import atomic_dir
from hbat.models.default import resolve_model_path

if TYPE_CHECKING:  # the typed config section is what callers pass
    from hbat.orchestrator.config import LoraConfig

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``'auto'`` picks bf16 on a GPU that supports it, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype '{dtype}'; choose one of auto, {', '.join(_DTYPES)}") from None


def resolve_device(device: str = "auto") -> torch.device:
    """``'auto'`` is the GPU Ray assigned to this process if any, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_tokenizer(name_or_path: str):
    """Tokenizer with a pad token (falls back to EOS) and left padding for generation."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _apply_lora(model, lora: "LoraConfig | None", task_type: str):
    if lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=lora.modules_to_save or None,
        task_type=task_type,
    )
    return get_peft_model(model, cfg)


def disable_dropout(model) -> int:
    """Set every ``nn.Dropout`` (the model's and LoRA's) to ``p = 0``; returns how many.

    Why: PPO's old log-probs and the reference run in eval mode (no dropout);
    if the trained forward drops units, the first step's ratio is not 1 and
    DPO's policy/reference log-ratio is not 0 at the start -- noise that the
    objectives read as signal. TRL's ``disable_dropout`` does the same.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p != 0.0:
            module.p = 0.0
            n += 1
    return n


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:]) if args and not args[0].is_contiguous() else None


def contiguous_lm_head(model) -> None:
    """Give the output projection a contiguous input.

    Why: generation's prefill projects only the last position,
    ``hidden[:, -1:, :]`` -- a strided ``[B, 1, H]`` view. torch's CPU
    ``linear`` on such a view in bf16 does not fold it to a matrix but
    broadcasts the ``[V, H]`` weight to ``[B, H, V]`` and copies it: measured
    1.4 s per call for SmolLM2-135M with 32 rows (6 ms when contiguous), a
    quarter of a bf16 rollout. Copying the ``[B, k, H]`` input costs nothing
    by comparison.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module):
        head.register_forward_pre_hook(_contiguous_input)


def _finish(model, device, trainable: bool, gradient_checkpointing: bool, no_dropout: bool = True):
    model.to(resolve_device(device) if isinstance(device, str) else device)
    contiguous_lm_head(model)
    if trainable:
        if no_dropout:
            disable_dropout(model)
        model.train()
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
    else:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return model


# role -> (transformers Auto class, extra from_pretrained kwargs, peft task type)
_ROLE_HEADS = {
    "causal_lm": ("AutoModelForCausalLM", {}, "CAUSAL_LM"),
    "reward": ("AutoModelForSequenceClassification", {"num_labels": 1}, "SEQ_CLS"),
    "critic": ("AutoModelForTokenClassification", {"num_labels": 1}, "TOKEN_CLS"),
}


def _load_role(role: str, name_or_path: str, dtype, device, lora, trainable: bool, gradient_checkpointing: bool,
               no_dropout: bool = True):
    import transformers

    cls_name, kwargs, task_type = _ROLE_HEADS[role]
    model = getattr(transformers, cls_name).from_pretrained(
        resolve_model_path(name_or_path), dtype=resolve_dtype(dtype), **kwargs)
    if role != "causal_lm":
        _ensure_pad(model, name_or_path)
    if trainable:
        model = _apply_lora(model, lora, task_type)
    return _finish(model, device, trainable, gradient_checkpointing, no_dropout)


def load_causal_lm(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    lora: "LoraConfig | None" = None,
    trainable: bool = False,
    gradient_checkpointing: bool = False,
    no_dropout: bool = True,
):
    """A causal LM for the policy (``trainable=True``), reference or rollout.

    ``no_dropout`` (trainable models): see :func:`disable_dropout`.
    """
    return _load_role("causal_lm", name_or_path, dtype, device, lora, trainable, gradient_checkpointing, no_dropout)


def load_reward_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    lora: "LoraConfig | None" = None,
    trainable: bool = False,
    gradient_checkpointing: bool = False,
    no_dropout: bool = True,
):
    """A scalar reward model: ``AutoModelForSequenceClassification`` with one label.

    From a causal-LM checkpoint the score head is freshly initialised (this is
    how reward-model training starts); from a trained reward checkpoint it is
    restored.
    """
    return _load_role("reward", name_or_path, dtype, device, lora, trainable, gradient_checkpointing, no_dropout)


def load_critic(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    lora: "LoraConfig | None" = None,
    trainable: bool = True,
    gradient_checkpointing: bool = False,
    no_dropout: bool = True,
):
    """A per-token value model: ``AutoModelForTokenClassification`` with one label.

    Using the stock token-classification head (rather than a custom value
    head) keeps critic checkpoints loadable by plain ``transformers``.
    """
    return _load_role("critic", name_or_path, dtype, device, lora, trainable, gradient_checkpointing, no_dropout)


def _ensure_pad(model, name_or_path: str) -> None:
    if model.config.pad_token_id is None:
        tok = load_tokenizer(name_or_path)
        model.config.pad_token_id = tok.pad_token_id


def save_checkpoint(model, tokenizer, path: str | os.PathLike, *, merge_lora: bool = True, extra: dict | None = None) -> Path:
    """Atomically write a Hugging Face folder (safetensors + tokenizer).

    A peft model is merged into its base first (``merge_lora``) so the folder
    loads with plain ``from_pretrained``; the in-memory model is not modified.
    ``extra`` is written as ``hbat.json`` (e.g. run id, step, weight version).
    """
    to_save = model
    if merge_lora and hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        import copy

        to_save = copy.deepcopy(model).merge_and_unload()
    with atomic_dir(path) as tmp:
        to_save.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra:
            (tmp / "hbat.json").write_text(json.dumps(extra, indent=2, sort_keys=True))
    return Path(path)
