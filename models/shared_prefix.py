"""One forward of a prefix that several rows of a batch share.

GRPO/RLOO sample ``n`` responses per prompt, and a DPO pair's chosen and
rejected responses follow the same prompt: in a scoring or training forward
the same prompt tokens are run ``n`` (or 2) times, and backpropagated ``n``
times. For the default GRPO bench (8 prompts x 4 samples, prompts ~38 tokens,
responses <= 32) that repeated prompt work is about 40 % of the forward and
backward FLOPs.

Here the batch's common prefix columns ``[0, P)`` are run once per distinct
prefix with the KV cache on; the cache is then indexed out to every row (an
autograd gather, so the prompt's gradient is the sum over its rows, exactly
as in the unshared forward) and the remaining columns ``[P, T)`` run against
it. A causal model's states at positions ``< P`` depend only on the tokens
at positions ``< P``, and positions stay ``0..T-1`` as in the plain forward,
so the logits are the same function of the weights -- the tests check the
log-probs and every parameter gradient against the plain forward.

It applies only where it is sound and pays: rows with equal prefixes exist,
the model keeps a plain per-layer KV cache, and gradient checkpointing is off
(transformers drops the cache under checkpointing). Anything else takes the
plain forward (``None``).
"""

from __future__ import annotations

import inspect

import torch

from hbat.models.scoring import unwrap_peft


def prefix_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_len: int):
    """``(first row of each distinct prefix [G], each row's group [B])``, or ``None``
    when every row's first ``prefix_len`` columns (tokens and mask) differ."""
    key = torch.cat([input_ids[:, :prefix_len], attention_mask[:, :prefix_len].to(input_ids.dtype)], dim=1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    if len(uniq) == len(key):
        return None
    first = torch.full((len(uniq),), len(key), dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(key), device=key.device), reduce="amin")
    return first, inverse


def _cache_arg(model) -> str:
    """The forward's KV-cache keyword: ``cache`` from transformers 5.24 on, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(unwrap_peft(model).forward).parameters else "past_key_values"


def _checkpointing(model) -> bool:
    """Activation checkpointing on (read without transformers' deprecation warning)."""
    base = unwrap_peft(model)
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(base), name):
            return bool(getattr(base, name))
    return False


def _plain_cache(cache) -> bool:
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _shared_head(model, input_ids, attention_mask, P: int, head_kwargs: dict):
    """``(prefix output, its KV cache indexed out to every row, each row's group,
    the tail's input embeddings)`` or ``None`` (see module doc).

    The prefix's and the tail's tokens are embedded in one lookup: each
    lookup's backward zeroes a vocabulary-sized gradient (113 MB for
    SmolLM2-135M) and the two are then summed, so two lookups cost ~40 ms
    more per CPU step than one."""
    T = input_ids.shape[1]
    if P < 2 or P >= T or _checkpointing(model):
        return None
    groups = prefix_groups(input_ids, attention_mask, P)
    if groups is None:
        return None
    first, inverse = groups
    head_ids, tail_ids = input_ids[first, :P], input_ids[:, P:]
    embeds = model.get_input_embeddings()(torch.cat([head_ids.reshape(-1), tail_ids.reshape(-1)]))
    head_embeds, tail_embeds = embeds.split([head_ids.numel(), tail_ids.numel()])
    head = model(inputs_embeds=head_embeds.view(*head_ids.shape, -1), attention_mask=attention_mask[first, :P],
                 use_cache=True, **head_kwargs)
    cache = getattr(head, "cache", None) or getattr(head, "past_key_values", None)
    if not _plain_cache(cache):
        return None
    for layer in cache.layers:  # an autograd gather per layer's K/V (index_select: its backward is an index_add)
        layer.keys, layer.values = layer.keys.index_select(0, inverse), layer.values.index_select(0, inverse)
    return head, cache, inverse, tail_embeds.view(*tail_ids.shape, -1)


def shared_prefix_hidden(backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_len: int):
    """A base model's last hidden states ``[B, T, H]`` with the prefix ``[0, prefix_len)``
    run once per distinct prefix (the critic's values); ``None`` when not applicable."""
    out = _shared_head(backbone, input_ids, attention_mask, prefix_len, {})
    if out is None:
        return None
    head, cache, inverse, tail_embeds = out
    tail = backbone(inputs_embeds=tail_embeds, attention_mask=attention_mask, use_cache=False,
                    **{_cache_arg(backbone): cache})
    return torch.cat([head.last_hidden_state.index_select(0, inverse), tail.last_hidden_state], dim=1)


def shared_prefix_scored_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                loss_cols: torch.Tensor, first_kept: int):
    """``(logits [N, V], rows [N], cols [N])`` of the scored cells of ``loss_cols``
    (``[B, T-1]``; all at columns ``>= first_kept``) with the prefix
    ``[0, first_kept]`` run once per distinct prefix; ``None`` when not
    applicable (then the caller runs the plain forward). Only the scored
    cells' hidden states are projected through the vocabulary."""
    from hbat.models.scoring import kept_logits

    P = first_kept + 1  # the prefix ends with the first position whose logits are kept
    out = _shared_head(model, input_ids, attention_mask, P, {"logits_to_keep": 1})
    if out is None:
        return None
    head, cache, inverse, tail_embeds = out
    scored = loss_cols.bool()
    rows_s = scored[:, first_kept].nonzero(as_tuple=True)[0]  # cells read from the prefix's last position
    keep = torch.nn.functional.pad(scored[:, P:], (0, 1))  # tail columns P..T-1 (the last one predicts nothing)
    rows_t, cols_t = keep.nonzero(as_tuple=True)
    tail = kept_logits(model, keep, inputs_embeds=tail_embeds, attention_mask=attention_mask, use_cache=False,
                       **{_cache_arg(model): cache})
    picked = torch.cat([head.logits[inverse[rows_s], -1], tail])
    cols = torch.cat([torch.full_like(rows_s, first_kept), cols_t + P])
    return picked, torch.cat([rows_s, rows_t]), cols
