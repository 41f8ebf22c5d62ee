"""How a rollout samples: one small settings record shared by every backend.

The same :class:`SamplingSettings` drives the transformers backend on CPU and
the vLLM backend on GPU, so a config picks decoding once and either engine
honours it. ``temperature == 0`` means greedy decoding (top-p / top-k are then
ignored); ``top_k == 0`` and ``top_p == 1.0`` disable those filters; ``n`` is
the number of samples per prompt (GRPO/RLOO groups, best-of-n); ``seed`` makes
sampling reproducible for a given batch of prompts on a given backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class SamplingSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    n: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ValueError(f"SamplingSettings.temperature must be a number, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"SamplingSettings.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)):
            raise ValueError(f"SamplingSettings.top_p must be a number, got {self.top_p!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingSettings.top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k, minimum=0, hint="0 disables top-k")
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        _check_int("n", self.n, minimum=1)
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=0)
        self.temperature = float(self.temperature)
        self.top_p = float(self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _check_int(name: str, value, *, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"SamplingSettings.{name} must be an integer, got {value!r}")
    if value < minimum:
        extra = f" ({hint})" if hint else ""
        raise ValueError(f"SamplingSettings.{name} must be >= {minimum}{extra}, got {value}")
