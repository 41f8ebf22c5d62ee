"""Step runners by algorithm: ``sft`` for instruction phases, and the
preference algorithms ``schedule.preference`` can name.

Adding an algorithm: write a :class:`StepRunner` subclass in a new file and
register it (``register_step(MyStep)``); its name is then valid for
``schedule.preference`` and ``hbat compare`` methods (``hbat-<name>``).
"""

from __future__ import annotations

from hbat.orchestrator.steps.base import StepContext, StepRunner, mix
from hbat.orchestrator.steps.ppo import PPOStep
from hbat.orchestrator.steps.preference import PreferenceStep, preference_options
from hbat.orchestrator.steps.sft import SFTStep

#: the runner of instruction phases
INSTRUCTION_STEP = SFTStep

#: ``schedule.preference`` name -> the runner of preference phases
PREFERENCE_STEPS: dict[str, type[StepRunner]] = {}


def register_step(runner: type[StepRunner]) -> type[StepRunner]:
    """Make ``runner.name`` a valid ``schedule.preference`` (usable as a class decorator)."""
    if runner.name == INSTRUCTION_STEP.name:
        raise ValueError(f"'{runner.name}' is the instruction-phase runner's name")
    PREFERENCE_STEPS[runner.name] = runner
    return runner


register_step(PPOStep)
register_step(PreferenceStep)


def runner_class(kind: str, preference: str) -> type[StepRunner]:
    """The runner of a phase of ``kind`` (``sft`` | ``preference``) in a run whose preference algorithm is ``preference``."""
    if kind == "sft":
        return INSTRUCTION_STEP
    try:
        return PREFERENCE_STEPS[preference]
    except KeyError:
        raise ValueError(f"unknown preference algorithm '{preference}' (known: {', '.join(PREFERENCE_STEPS)})") from None


__all__ = ["INSTRUCTION_STEP", "PREFERENCE_STEPS", "PPOStep", "PreferenceStep", "SFTStep", "StepContext",
           "StepRunner", "mix", "preference_options", "register_step", "runner_class"]
