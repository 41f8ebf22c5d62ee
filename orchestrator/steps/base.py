"""What one algorithm family contributes to a run, behind one small interface.

The driver runs a plan of phases; each phase is trained by a *step runner*
chosen by its kind (instruction phases: SFT; preference phases: the runner
``schedule.preference`` names). A runner owns what differs between
algorithms -- which data file its phases read, their batch size, step budget
and optimizer section, how many optimizer steps one of its steps makes, the
step itself, and the loss parts original (Fisher) EWC estimates on -- so the
driver's loop has no per-algorithm branches and a new algorithm is one new
file plus a :func:`register_step` line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hbat.actors.policy import LossPart
from hbat.orchestrator.config import Config, ConfigError, OptimConfig
from hbat.orchestrator.roles import Roles
from hbat.orchestrator.run_data import RunData, batch_indices


@dataclass(frozen=True)
class StepContext:
    """Where a step is: its phase and step index (seeds, batch draws) and the
    mixed-in SFT term of ptx / joint phases (``mix_for(optimizer_step)``:
    a fresh SFT loss part per optimizer step, or None)."""

    phase_index: int
    step: int
    mix_for: Callable[[int], LossPart | None]


class StepRunner(ABC):
    """Base: a phase of ``section``'s algorithm on the data file ``data_key``.

    Subclasses set ``name``, ``section`` (the config section holding
    ``batch_size``/``steps_per_phase``/``optim``) and implement :meth:`step`;
    everything else has a default that fits one-optimizer-step-per-step
    algorithms.
    """

    name: ClassVar[str]
    section: ClassVar[str]
    batch_key: ClassVar[str] = "batch_size"

    def __init__(self, cfg: Config, data: RunData, roles: Roles):
        self.cfg, self.data, self.roles = cfg, data, roles

    # -- what the run needs ---------------------------------------------------
    @classmethod
    def config_errors(cls, cfg: Config) -> list[str]:
        """Problems with the config for this algorithm (checked at validation, before any data load)."""
        return []

    @classmethod
    def extra_roles(cls, cfg: Config) -> list[str]:
        """Roles beyond the policy its phases use (``"reference"`` included only
        when a phase reads reference log-probs: a run that never does places no
        reference model, and a 7B reference is 14 GB per device not held)."""
        return []

    @property
    @abstractmethod
    def data_key(self) -> str:
        """The ``data.<key>`` its phases shard."""

    def dataset(self):
        ds = self.data.get(self.data_key)
        if ds is None:
            raise ConfigError(f"{self.name} phases need data.{self.data_key}")
        return ds

    # -- budget ---------------------------------------------------------------
    @property
    def settings(self):
        return getattr(self.cfg, self.section)

    @property
    def batch_size(self) -> int:
        return getattr(self.settings, self.batch_key)

    @property
    def steps_per_phase(self) -> int | None:
        return self.settings.steps_per_phase

    @property
    def optim(self) -> OptimConfig:
        return self.settings.optim

    def step_indices(self, n: int, bs: int, phase_index: int, step: int, steps: int) -> list[int]:
        """Which ``bs`` of the phase's ``n`` records step ``step`` of ``steps`` trains on
        (default: seeded random batches, the same on resume)."""
        return batch_indices(self.cfg.run.seed, n, bs, phase_index, step)

    def optimizer_steps(self, steps: int, batch_size: int) -> int:
        """Optimizer steps that ``steps`` of its steps on ``batch_size`` records make (LR schedules count these)."""
        return steps

    # -- training -------------------------------------------------------------
    @abstractmethod
    def step(self, examples: list[dict], ctx: StepContext) -> dict:
        """One step on ``examples`` (a batch of its data); returns metrics."""

    @abstractmethod
    def fisher_parts(self, draw: Callable[[int], list[dict]], n: int, phase_index: int) -> list[LossPart]:
        """``n`` loss parts of its objective for original EWC's Fisher (``draw(k)``: the k-th batch)."""

    # -- run-level state (e.g. a critic) --------------------------------------
    def begin_run(self, optimizer_steps: int, resume_from: Path | None) -> None:
        """Once per run after the actors start; ``optimizer_steps``: all its phases' optimizer steps."""

    def begin_phase(self) -> None:
        """At the start of each of its phases (not when resuming inside one)."""

    def end_phase(self) -> None:
        """At the end of each of its phases, before the phase-boundary checkpoint."""

    def save_state(self, folder: Path) -> list:
        """Object refs of the writes of its own actors' state into a checkpoint folder."""
        return []


def mix(parts: list[LossPart], ctx: StepContext, optimizer_step: int) -> list[LossPart]:
    """``parts`` plus the phase's mixed-in SFT term for that optimizer step, if any."""
    extra = ctx.mix_for(optimizer_step)
    return parts + ([extra] if extra is not None else [])
