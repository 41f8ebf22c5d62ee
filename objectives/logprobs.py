"""Per-token log-probabilities, sequence log-probabilities and entropy.

Shift convention used by all of ``hbat``: for ``input_ids [B,T]`` and
``logits [B,T,V]`` (logits at position t predict token t+1), the per-token
log-prob tensor has shape ``[B,T-1]`` and position t holds
``log p(input_ids[:, t+1] | input_ids[:, :t+1])``. Its mask is
``loss_mask[:, 1:]`` (the *action mask*).

All results are float32 whatever the logits dtype: bf16 log-softmax loses
about two decimal digits, which is enough to bias PPO ratios and DPO margins.
To avoid materialising a float32 copy of the full ``[B,T,V]`` logits (the
largest activation of an LLM step) we work one row at a time: peak extra
memory is ``[T,V]`` in float32 instead of ``[B,T,V]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .masked import masked_mean, masked_sum

__all__ = ["token_logprobs", "sequence_logprobs", "entropy_from_logits"]


def tempered_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``logits / temperature`` in float32 (unchanged when ``temperature`` is 1 or 0).

    Why: a rollout sampled at temperature T drew tokens from
    ``softmax(z / T)``; PPO's old/new log-probs and the KL to the reference
    must score that same distribution (TRL divides the same way). ``0``
    (greedy) has no distribution to rescale and is treated as 1.
    """
    if not temperature or temperature == 1.0:
        return logits
    return logits.float() / temperature


def token_logprobs(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Log-prob of each next token: ``[B,T,V], [B,T] -> [B,T-1]`` (float32).

    Formula: ``out[b,t] = z[b,t,y] - logsumexp_v z[b,t,v]`` with
    ``z = logits[:, :-1]`` and ``y = input_ids[b, t+1]`` -- i.e.
    ``log_softmax`` evaluated only at the target, without building the full
    ``[B,T,V]`` log-softmax tensor.

    Why: every objective (SFT NLL, PPO ratios, KL penalties, DPO log-ratios)
    needs exactly these numbers; computing them one way avoids off-by-one
    shift bugs between actors.
    """
    if logits.dim() != 3 or input_ids.dim() != 2 or logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"expected logits [B,T,V] and input_ids [B,T], got {tuple(logits.shape)} and {tuple(input_ids.shape)}"
        )
    targets = input_ids[:, 1:].long()
    rows = []
    # unbind, not logits[b]: the backward of ``unbind`` stacks the row grads
    # once, while each ``logits[b]`` select would allocate and fill its own
    # zero [B,T,V] gradient (B of them: quadratic in the batch, measured as
    # 15 % of a DPO step on the 135M model)
    for row, tgt in zip(logits.unbind(0), targets.unbind(0)):
        z = row[:-1].float()  # [T-1, V]; one row at a time bounds fp32 memory
        picked = z.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(z, dim=-1))
    if not rows:
        return logits.new_zeros((0, max(logits.shape[1] - 1, 0)), dtype=torch.float32)
    return torch.stack(rows, dim=0)


def flat_token_logprobs(logits: Tensor, targets: Tensor, chunk: int = 256) -> Tensor:
    """Log-prob of each target under its own row of logits: ``[N,V], [N] -> [N]`` (float32).

    Formula: ``out[n] = z[n,y_n] - logsumexp_v z[n,v]``, the same as
    :func:`token_logprobs` for positions gathered out of any layout (packed
    rows: ``models/packing.py``), in chunks of ``chunk`` rows to bound the
    float32 copy.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N,V] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}")
    out = []
    for z, y in zip(logits.split(chunk), targets.long().split(chunk)):
        z = z.float()
        out.append(z.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1))
    return torch.cat(out) if out else logits.new_zeros(0, dtype=torch.float32)


def sequence_logprobs(logits: Tensor, input_ids: Tensor, loss_mask: Tensor, average: bool = False) -> Tensor:
    """Log-probability of each row's response: ``-> [B]`` (float32).

    Formula: ``sum_t m_t * lp_t`` with ``lp = token_logprobs(logits, input_ids)``
    and ``m = loss_mask[:, 1:]``; with ``average=True`` divided by
    ``sum_t m_t`` (0 for rows with no response tokens).

    Why: DPO-family losses work on summed response log-probs
    log pi(y|x) (Rafailov et al. 2023); IPO-style length-normalised variants
    pass ``average=True`` (TRL's ``loss_type="ipo"`` averages).
    """
    lp = token_logprobs(logits, input_ids)
    m = loss_mask[:, 1:]
    return masked_mean(lp, m, dim=1) if average else masked_sum(lp, m, dim=1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution at every position: ``[B,T,V] -> [B,T]``.

    Formula: ``H = logsumexp(z) - sum_v softmax(z)_v * z_v``
    (= ``-sum_v p_v log p_v``), computed in float32, one row at a time.
    Vocabulary entries with logit ``-inf`` (banned tokens) contribute 0.

    Why: a policy-entropy curve is the standard early warning for PPO/GRPO
    collapse; some users also add an entropy bonus to the loss, so the result
    stays differentiable.
    """
    rows = []
    for row in logits.unbind(0):  # unbind: one stacked row-gradient in backward (see token_logprobs)
        z = row.float()
        p = torch.softmax(z, dim=-1)
        # banned tokens (logit -inf) have p = 0; zero them so 0 * -inf is not NaN
        z_finite = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
        rows.append(torch.logsumexp(z, dim=-1) - (p * z_finite).sum(dim=-1))
    if not rows:
        return logits.new_zeros((0, logits.shape[1]), dtype=torch.float32)
    return torch.stack(rows, dim=0)
