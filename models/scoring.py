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


def response_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_cols: torch.Tensor,
                            temperature: float = 1.0, autocast=None, share_prefix: bool = True, packing: str = "off",
                            entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Token log-probs ``[B, T-1]`` (float32; the shift convention of
    ``objectives/logprobs.py``) computed from the logits of the response
    positions only; zeros left of the first column any row scores.

    ``loss_cols`` ``[B, T-1]``: the loss/action mask (``loss_mask[:, 1:]``).
    The model projects only positions ``s..T-1`` through the vocabulary
    (transformers' ``logits_to_keep``), ``s`` being the first column any row
    scores, so a long prompt costs no ``[T, V]`` logits and no backward
    through them -- with a vocabulary of 150k the logits are the largest
    activation of a step. Rows that share their first ``s + 1`` tokens (a
    prompt's GRPO samples, a pair's chosen and rejected) run that prefix once
    (``models/shared_prefix.py``; ``share_prefix=False``, or a sharded model,
    runs every row whole). Otherwise ``packing`` (``off``/``auto``/``on``,
    ``models/packing.py``) may run the rows' real tokens end to end instead of
    padded, projecting exactly the ``loss_cols`` cells; the log-probs of the
    other columns are then 0.

    Returns ``(logps, entropy, s)``: ``entropy`` ``[B, T-1]`` (no gradient;
    ``None`` unless asked) is the sampling distribution's entropy at the
    scored columns, for the PPO entropy curve.
    """
    import contextlib

    from hbat.models.packing import packed_scored_logits, packing_plan
    from hbat.models.shared_prefix import shared_prefix_logits
    from hbat.objectives import entropy_from_logits, flat_token_logprobs, tempered_logits, token_logprobs

    B, T = input_ids.shape
    cols = loss_cols.any(0).nonzero()
    s = int(cols[0]) if len(cols) else max(T - 2, 0)
    with autocast or contextlib.nullcontext():
        logits = shared_prefix_logits(model, input_ids, attention_mask, s) if share_prefix else None
        capacity = packing_plan(model, attention_mask, packing) if logits is None else None
        if capacity:
            picked, rows, cols = packed_scored_logits(model, input_ids, attention_mask, loss_cols, capacity)
        elif logits is None:
            logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=T - s).logits
    ent = None
    if capacity:
        z = tempered_logits(picked, temperature)
        lp = torch.zeros(B, T - 1, dtype=torch.float32, device=z.device)
        lp = lp.index_put((rows, cols), flat_token_logprobs(z, input_ids[rows, cols + 1]))
        if entropy:
            with torch.no_grad():
                ent = torch.zeros_like(lp).index_put((rows, cols), entropy_from_logits(z.detach()[None])[0])
        return lp, ent, s
    if logits.shape[1] != T - s:  # a model that ignores logits_to_keep
        logits = logits[:, s:]
    logits = tempered_logits(logits, temperature)
    lp = torch.nn.functional.pad(token_logprobs(logits, input_ids[:, s:]), (s, 0))
    if entropy:
        with torch.no_grad():
            ent = torch.nn.functional.pad(entropy_from_logits(logits.detach()[:, :-1]), (s, 0))
    return lp, ent, s
