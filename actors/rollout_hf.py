"""Rollout backend on plain ``transformers`` ``generate`` (CPU, or a GPU without vLLM).

Token ids in, token ids out: prompts arrive already tokenised (the driver
tokenised them once) and responses leave as id lists, so nobody re-tokenises.
A batch is left-padded and sent through one ``model.generate`` call.

Weight updates take a state dict from the trainable policy. Two naming
schemes are accepted:

* plain ``transformers`` names (``model.layers.0.self_attn.q_proj.weight``,
  ``lm_head.weight``), as from ``model.state_dict()`` or ``named_parameters()``
  of an un-wrapped model or of ``peft_model.merge_and_unload()``;
* peft-wrapped names of a model whose LoRA was merged in place
  (``base_model.model.`` prefix, ``.base_layer`` infix,
  ``.modules_to_save.default`` copies): the wrapper parts are stripped and
  ``original_module`` copies dropped.

LoRA factors (``lora_A`` / ``lora_B`` ...) are refused with a clear error: the
rollout model has no adapter and the names cannot tell whether the factors
were already merged. A policy holding a peft model exports with
:func:`merged_state_dict`, which folds active adapters into the base weights
without modifying the model and returns plain names.
"""

from __future__ import annotations

import torch

from hbat.actors.sampling import SamplingSettings
from hbat.models.loader import load_causal_lm, load_tokenizer, resolve_device

_PEFT_PREFIX = "base_model.model."


def _is_lora_key(name: str) -> bool:
    return ".lora_" in name or name.startswith("lora_")


def normalize_weight_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map peft-wrapped parameter names to plain ``transformers`` names (see module doc)."""
    out: dict[str, torch.Tensor] = {}
    lora = [k for k in weights if _is_lora_key(k)]
    if lora:
        raise ValueError(
            f"weights contain LoRA adapter tensors (e.g. '{lora[0]}'); send full merged weights "
            "instead: hbat.actors.rollout_hf.merged_state_dict(model) folds the adapter in"
        )
    for name, tensor in weights.items():
        if ".original_module." in name:
            continue  # peft keeps a frozen copy next to modules_to_save; the trained copy wins
        plain = name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name
        plain = plain.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        out[plain] = tensor
    return out


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """Full CPU weights of ``model`` under plain names, ready for ``load_weights``.

    For a peft LoRA model the active, not-yet-merged adapters are added to
    their base weights (``W + delta``, peft's own ``get_delta_weight``) in a
    copy; the model itself is left untouched. A plain model just gives its
    state dict.
    """
    state = {k: v for k, v in model.state_dict().items() if not _is_lora_key(k)}
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft absent: the model cannot hold adapters
        BaseTunerLayer = ()
    for mod_name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer) or not hasattr(module, "get_delta_weight"):
            continue
        key = f"{mod_name}.base_layer.weight"
        if key not in state or module.disable_adapters:
            continue
        merged = state[key].clone()
        for adapter in module.active_adapters:
            if adapter in module.merged_adapters:
                continue  # already inside the base weight
            if getattr(module, "use_dora", {}).get(adapter, False):
                raise NotImplementedError("exporting DoRA adapters is not supported; merge_and_unload() first")
            merged += module.get_delta_weight(adapter).to(merged.dtype)
        state[key] = merged
    return {k: v.detach().cpu() for k, v in normalize_weight_names(state).items()}


class HFGenerationBackend:
    """Batched sampling with ``model.generate``; see the module docstring for weights."""

    name = "hf"

    def __init__(self, model: str, dtype: str = "float32", device: str = "auto"):
        self.device = resolve_device(device)
        self._tokenizer = load_tokenizer(model)
        self.model = load_causal_lm(model, dtype=dtype, device=self.device)
        self.pad_token_id = self._tokenizer.pad_token_id
        eos = set()
        if self._tokenizer.eos_token_id is not None:
            eos.add(int(self._tokenizer.eos_token_id))
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if gen_eos is not None:
            eos.update(int(e) for e in ([gen_eos] if isinstance(gen_eos, int) else gen_eos))
        if not eos:
            raise ValueError(f"model '{model}' defines no end-of-sequence token (tokenizer or generation_config)")
        self.eos_token_ids = sorted(eos)

    @property
    def tokenizer(self):
        return self._tokenizer

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> list[list[list[int]]]:
        """For each prompt, ``sampling.n`` response id lists (ending at and including
        the first EOS when one was produced; never padded)."""
        if not prompt_ids:
            return []
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; a prompt needs at least one token")
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for i, p in enumerate(prompt_ids):
            input_ids[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
            attention_mask[i, width - len(p):] = 1

        from transformers import GenerationConfig

        greedy = sampling.greedy
        # HF greedy search returns one sequence per prompt; n identical greedy
        # samples are made by repetition below instead of n forward passes.
        per_prompt = 1 if greedy else sampling.n
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            num_return_sequences=per_prompt,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_ids,
            **({} if greedy else dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)),
        )
        self.model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=sampling.seed is not None):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=config,
            )
        new_tokens = out[:, width:].cpu().tolist()
        eos = set(self.eos_token_ids)
        rows = [_cut_at_eos(r, eos) for r in new_tokens]
        result = []
        for i in range(len(prompt_ids)):
            group = rows[i * per_prompt : (i + 1) * per_prompt]
            result.append([list(group[0]) for _ in range(sampling.n)] if greedy else group)
        return result

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Copy ``weights`` into the model in place (dtype/device converted).

        Every name must match a model tensor (unknown names are an error). With
        ``strict`` every model tensor must be provided too, except aliases of a
        provided tensor (tied embeddings: ``lm_head.weight`` may be left out
        when ``model.embed_tokens.weight`` is sent).
        """
        weights = normalize_weight_names(weights)
        own = self.model.state_dict()
        unknown = sorted(set(weights) - set(own))
        if unknown:
            raise ValueError(
                f"{len(unknown)} weight name(s) do not match the rollout model, e.g. {unknown[:3]}"
            )
        for name, tensor in weights.items():
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise ValueError(
                    f"weight '{name}' has shape {tuple(tensor.shape)}, "
                    f"the rollout model expects {tuple(own[name].shape)}"
                )
        missing = set(own) - set(weights)
        if strict and missing:
            provided_ptrs = {own[n].data_ptr() for n in weights}
            really_missing = sorted(n for n in missing if own[n].data_ptr() not in provided_ptrs)
            if really_missing:
                raise ValueError(
                    f"{len(really_missing)} model weight(s) missing from the update, e.g. {really_missing[:3]} "
                    "(pass strict=False for a partial update)"
                )
        self.model.load_state_dict(weights, strict=False)


def _cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Keep tokens up to and including the first EOS.

    A row without EOS was still running when generation stopped, so all its
    positions are real tokens (HF pads only rows that finished) and it is kept
    whole, even if the model sampled the pad id as an ordinary token.
    """
    for j, t in enumerate(tokens):
        if t in eos:
            return tokens[: j + 1]
    return tokens
