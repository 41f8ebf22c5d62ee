"""The one record that travels through PPO (docs/architecture.md §7).

The rollout actor creates it (token ids and masks, never text to re-tokenise);
the policy adds old log-probs, the reference adds reference log-probs, the
reward actor adds scores, the critic adds values, and the driver adds rewards,
advantages and returns. It is a plain dataclass of CPU tensors so it moves
through the Ray object store cheaply and without pickling any model.

Layout: ``sequences`` is ``[N, T]`` = left-padded prompt + right-padded
response. Token-level fields are ``[N, T-1]`` and aligned with shifted
log-probs: position t scores token t+1. ``action_mask`` is 1 on response
tokens (including the end-of-turn token when one was generated). ``eos`` is
``[N]`` bool: the response ended with an end token (False: cut at
``max_new_tokens``). ``temperature`` is the sampling temperature: every
log-prob of these tokens (old, new, reference) is taken from
``logits / temperature``, the distribution they were sampled from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

_TENSOR_FIELDS = (
    "sequences",
    "attention_mask",
    "action_mask",
    "prompt_index",
    "logprobs",
    "ref_logprobs",
    "values",
    "scores",
    "eos",
    "token_rewards",
    "advantages",
    "returns",
)
_LIST_FIELDS = ("prompt_text", "response_text", "meta")


@dataclass
class Experience:
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    prompt_index: torch.Tensor
    prompt_text: list[str] = field(default_factory=list)
    response_text: list[str] = field(default_factory=list)
    meta: list[dict] = field(default_factory=list)
    weight_version: int = 0
    temperature: float = 1.0
    eos: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    token_rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.sequences.shape[0])

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.action_mask.sum(dim=1)

    def with_fields(self, **updates) -> "Experience":
        """A copy with some fields set (actors return new records, never mutate)."""
        return dataclasses.replace(self, **updates)

    def select(self, index: torch.Tensor | list[int]) -> "Experience":
        idx = torch.as_tensor(index, dtype=torch.long)
        out = {}
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            out[name] = None if value is None else value[idx]
        for name in _LIST_FIELDS:
            value = getattr(self, name)
            out[name] = [value[i] for i in idx.tolist()] if value else []
        return Experience(weight_version=self.weight_version, temperature=self.temperature, **out)

    def minibatches(self, size: int, generator: torch.Generator | None = None) -> list["Experience"]:
        """Shuffled mini-batches for PPO epochs (last one may be smaller)."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        return [self.select(order[i : i + size]) for i in range(0, len(self), size)]

    def to(self, device: torch.device | str) -> "Experience":
        updates = {
            name: getattr(self, name).to(device)
            for name in _TENSOR_FIELDS
            if getattr(self, name) is not None
        }
        return self.with_fields(**updates)

    @staticmethod
    def concat(parts: list["Experience"], pad_id: int) -> "Experience":
        """Join records from several rollout workers, re-padding to one width.

        Prompts are left-padded and responses right-padded, so widths are
        aligned by padding on the right; token fields get zeros there.
        """
        if len(parts) == 1:
            return parts[0]
        width = max(p.sequences.shape[1] for p in parts)
        out: dict = {}
        for name in _TENSOR_FIELDS:
            values = [getattr(p, name) for p in parts]
            if any(v is None for v in values):
                out[name] = None
                continue
            if values[0].dim() == 2:
                target = width if name in ("sequences", "attention_mask") else width - 1
                fill = pad_id if name == "sequences" else 0
                values = [
                    torch.nn.functional.pad(v, (0, target - v.shape[1]), value=fill) for v in values
                ]
            out[name] = torch.cat(values, dim=0)
        offset = 0
        shifted = []
        for p in parts:
            shifted.append(p.prompt_index + offset)
            offset += int(p.prompt_index.max().item()) + 1 if len(p) else 0
        out["prompt_index"] = torch.cat(shifted)
        for name in _LIST_FIELDS:
            out[name] = [x for p in parts for x in getattr(p, name)]
        temps = {p.temperature for p in parts}
        if len(temps) > 1:
            raise ValueError(f"cannot join experience sampled at different temperatures {sorted(temps)}")
        return Experience(weight_version=min(p.weight_version for p in parts), temperature=temps.pop(), **out)
