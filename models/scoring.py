"""Forward passes shared by actors and evaluation: reward at the last real token
and per-token critic values.

We pool the reward ourselves from the attention mask instead of relying on
``pad_token_id`` inside transformers: many chat tokenizers use EOS as pad, and
then the stock pooling would skip the final end-of-turn token of the response.
"""

from __future__ import annotations

import torch


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row (works with left or right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def unwrap_peft(model):
    """The transformers model under a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _backbone_and_head(model, head_name: str):
    base = unwrap_peft(model)
    backbone = getattr(base, base.base_model_prefix)
    head = getattr(base, head_name)
    return backbone, head


def reward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward per row from a sequence-classification model: [B]."""
    backbone, head = _backbone_and_head(model, "score")
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    idx = last_token_index(attention_mask)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    return head(pooled).squeeze(-1).float()


def critic_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  prefix_len: int = 0) -> torch.Tensor:
    """Per-token values [B, T-1] aligned with shifted token log-probs.

    Value at position t estimates the return from choosing token t+1, i.e. it
    is read from the hidden state at t, the same state that produced the
    logits for token t+1. ``prefix_len``: rows sharing their first
    ``prefix_len`` tokens (a prompt's samples) run them once
    (``models/shared_prefix.py``); 0 runs every row whole.
    """
    if prefix_len:
        from hbat.models.shared_prefix import shared_prefix_hidden

        backbone, head = _backbone_and_head(model, "score")
        hidden = shared_prefix_hidden(backbone, input_ids, attention_mask, prefix_len)
        if hidden is not None:
            dropout = getattr(unwrap_peft(model), "dropout", None)
            hidden = dropout(hidden) if isinstance(dropout, torch.nn.Module) else hidden
            return head(hidden)[:, :-1, 0].float()
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B,T,1]
    return logits[:, :-1, 0].float()


def _keep_takes_a_mask() -> bool:
    """Whether this transformers accepts a boolean ``[batch, seq]`` ``logits_to_keep``."""
    import inspect

    from transformers import modeling_utils

    fn = getattr(modeling_utils, "slice_logits_to_keep", None)
    return fn is not None and "torch.bool" in inspect.getsource(fn)


def kept_logits(model, keep: torch.Tensor, **forward) -> torch.Tensor:
    """Logits ``[n, V]`` of the ``n`` True cells of ``keep`` (``[B, T]``, the
    forward's input layout), in row-major order: only those hidden states are
    projected through the vocabulary (transformers' ``logits_to_keep`` as a
    boolean mask; an older transformers keeps every column from the first
    kept one, and a model that ignores the argument returns all of them --
    both are indexed down here)."""
    T = keep.shape[1]
    if _keep_takes_a_mask():
        out = model(**forward, logits_to_keep=keep).logits
        if out.dim() == 2:
            return out
    else:
        cols = keep.any(0).nonzero()
        out = model(**forward, logits_to_keep=T - (int(cols[0]) if len(cols) else T - 1)).logits
    return out[keep[:, T - out.shape[1]:]]


def response_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_cols: torch.Tensor,
                            temperature: float = 1.0, compute=None, share_prefix: bool = True, packing: str = "off",
                            entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Token log-probs ``[B, T-1]`` (float32; the shift convention of
    ``objectives/logprobs.py``) of the scored cells, 0 elsewhere.

    ``loss_cols`` ``[B, T-1]``: the loss/action mask (``loss_mask[:, 1:]``).
    Only the scored cells' hidden states are projected through the
    vocabulary (:func:`kept_logits`): with a vocabulary of 150k the logits
    are the largest activation of a step, and a prompt, a pad or a token past
    EOS needs none. Rows that share their first ``s + 1`` tokens (``s``: the
    first column any row scores; a prompt's GRPO samples, a pair's chosen and
    rejected) run that prefix once (``models/shared_prefix.py``;
    ``share_prefix=False``, or a sharded model, runs every row whole).
    Otherwise ``packing`` (``off``/``auto``/``on``, ``models/packing.py``)
    may run the rows' real tokens end to end instead of padded.
    ``compute``: the context the forward runs in (``Precision.compute``:
    autocast and, on a CPU, the attention kernel), else none.

    Returns ``(logps, entropy, s)``: ``entropy`` ``[B, T-1]`` (no gradient;
    ``None`` unless asked) is the sampling distribution's entropy at the
    scored cells, for the PPO entropy curve.
    """
    import contextlib

    from hbat.models.packing import packed_scored_logits, packing_plan
    from hbat.models.shared_prefix import shared_prefix_scored_logits
    from hbat.objectives import entropy_from_logits, flat_token_logprobs, tempered_logits

    B, T = input_ids.shape
    cols = loss_cols.any(0).nonzero()
    s = int(cols[0]) if len(cols) else max(T - 2, 0)
    with compute or contextlib.nullcontext():
        out = shared_prefix_scored_logits(model, input_ids, attention_mask, loss_cols, s) if share_prefix else None
        capacity = packing_plan(model, attention_mask, packing) if out is None else None
        if capacity:
            out = packed_scored_logits(model, input_ids, attention_mask, loss_cols, capacity)
        elif out is None:
            keep = torch.nn.functional.pad(loss_cols.bool(), (0, 1))
            rows, cols = loss_cols.bool().nonzero(as_tuple=True)
            out = kept_logits(model, keep, input_ids=input_ids, attention_mask=attention_mask), rows, cols
    picked, rows, cols = out
    z = tempered_logits(picked, temperature)
    lp = torch.zeros(B, T - 1, dtype=torch.float32, device=input_ids.device)
    lp = lp.index_put((rows, cols), flat_token_logprobs(z, input_ids[rows, cols + 1]))
    ent = None
    if entropy:
        with torch.no_grad():
            ent = torch.zeros_like(lp).index_put((rows, cols), entropy_from_logits(z.detach()[None])[0])
    return lp, ent, s
