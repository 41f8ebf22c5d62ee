"""Next-token choice for the transformers backend, OpenAI semantics.

Pure torch on a [rows, vocab] logits tensor:

* ``logit_bias`` is added first, then presence/frequency penalties as OpenAI
  defines them: ``logit[j] -= frequency_penalty * count[j] + presence_penalty * (count[j] > 0)``
  over the tokens generated so far;
* ``temperature == 0`` (or below 1e-5) is greedy; otherwise logits are divided by the
  temperature, cut to ``top_k`` (0 = off) and to the smallest nucleus with
  probability >= ``top_p``, and sampled with the request's own
  ``torch.Generator`` (a ``seed`` makes the answer reproducible; no global RNG
  state is touched, so concurrent requests do not disturb each other).

Log-probabilities reported to clients are those of the model's own
distribution (log-softmax of the raw logits), as vLLM reports by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: temperatures below this are treated as 0 (greedy): dividing by them overflows
GREEDY_BELOW = 1e-5


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def adjust_logits(logits: torch.Tensor, params: SamplingParams, counts: torch.Tensor | None,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """Bias and penalties (before temperature), on a float copy."""
    out = logits.float().clone()
    if bias is not None:
        out += bias
    if counts is not None:
        out -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
    return out


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """Next token per row: [rows] (long)."""
    if params.temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    scaled = filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def logprob_info(raw_logits: torch.Tensor, chosen: torch.Tensor, k: int):
    """(chosen logprob [rows], top-k ids [rows,k], top-k logprobs [rows,k])."""
    logp = torch.log_softmax(raw_logits.float(), dim=-1)
    picked = logp.gather(-1, chosen[:, None]).squeeze(-1)
    if k > 0:
        top = torch.topk(logp, k, dim=-1)
        return picked, top.indices, top.values
    return picked, None, None
