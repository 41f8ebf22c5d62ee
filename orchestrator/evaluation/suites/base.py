"""What every metric suite sees, and the small interface it implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hbat.orchestrator.evaluation.evalset import EvalExample
from hbat.orchestrator.evaluation.generation import Generations
from hbat.orchestrator.evaluation.settings import EvalConfig
from hbat.orchestrator.evaluation.stats import Metric


@dataclass
class Context:
    """One model's evaluation: the examples, its responses and the opponent's.

    ``baseline`` holds the baseline's responses (same order) when a win-rate
    opponent was given. ``services`` holds long-lived helpers shared by suites
    (the reward scorer, the KL actor), owned by the caller. ``extra`` collects
    non-metric results (distributions, per-instruction tables) for results.json.
    """

    model: str
    examples: list[EvalExample]
    gen: Generations
    cfg: EvalConfig
    baseline: list[str] | None = None
    services: dict[str, Any] = field(default_factory=dict)
    owned: dict[str, Any] = field(default_factory=dict)  # services a suite started itself (closed after)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def responses(self) -> list[str]:
        return self.gen.responses


class Suite:
    """``missing(ctx)`` names an absent input (None when runnable); ``run`` returns metrics."""

    name = ""
    description = ""

    def missing(self, ctx: Context) -> str | None:
        return None

    def run(self, ctx: Context) -> dict[str, Metric]:
        raise NotImplementedError
