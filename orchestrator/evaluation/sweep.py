"""``sweep:`` of a compare config: methods x settings x seeds.

A sweep maps dotted keys of the shared training config (relative to
``train:``, e.g. ``ewc.strength`` or ``preference_loss.optim.lr``) to lists
of values. Every combination of values (a *setting*; one key gives one
setting per value) is applied as an override on a method's training config,
after the method's own ``overrides``, and every method x setting x seed is
one run, labelled ``<method>[<key>=<value>,...]``.

A method runs once per setting only if the swept key can change its
training. That is decided from the method's own training config, not from a
list of method names: a run reads the config section of each phase's step
runner (``sft``, ``ppo``, ``preference_loss``: ``StepRunner.section``), the
``sft`` section too where a preference phase mixes in an SFT term (ptx,
joint), and ``ewc`` only where its plan (``build_plan``) anchors or records
an EWC anchor (``hbat``, and not with ``ewc.method: none``; never
``alternating``, ``two_stage``, ``ptx``, ``joint``, ``sft_only``). A key in
one of those step sections that no value of the sweep makes the method read
leaves that method alone: it runs once, unlabelled, with the unswept config.
Keys of every other section (``model``, ``data``, ``schedule``,
``reference``, ...) are taken to matter to every method. (The per-phase
probe of every run answers with ``ppo.max_new_tokens``/``top_p``/``top_k``;
the rule leaves that aside: it moves the ``curves.png`` probe of a DPO run,
not its training or any number of the table.)

A few keys cannot be swept: ``run.*``, ``schedule.name`` and
``schedule.preference`` are what ``hbat compare`` itself sets per run, and
the shared reward model (``model.reward``, the reward-model training keys of
``reward_model``) is trained or loaded once for all runs, so sweeping it
would label identical runs differently.
"""

from __future__ import annotations

import itertools
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from hbat.orchestrator.config import Config
from hbat.orchestrator.schedules import build_plan
from hbat.orchestrator.steps import INSTRUCTION_STEP, PREFERENCE_STEPS, runner_class

#: swept-key prefixes refused, and why
RESERVED = {
    "run": "hbat compare sets run.* for each run itself",
    "schedule.name": "the method sets it (list more methods instead)",
    "schedule.preference": "the method sets it (list more methods instead)",
    "model.reward": "one reward model is shared by every run (reward_model: of the compare config)",
    "reward_model.epochs": "the shared reward model is trained once, from the unswept train: config",
    "reward_model.batch_size": "the shared reward model is trained once, from the unswept train: config",
    "reward_model.max_steps": "the shared reward model is trained once, from the unswept train: config",
    "reward_model.optim": "the shared reward model is trained once, from the unswept train: config",
}


def step_sections() -> set[str]:
    """Config sections read only by the runs whose plan uses them (see module doc)."""
    return {INSTRUCTION_STEP.section, "ewc", *(r.section for r in PREFERENCE_STEPS.values())}


def _model_of(annotation) -> type[BaseModel] | None:
    """The pydantic section class a field holds (``X`` or ``X | None``), else None."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def key_error(key: str, values: Any) -> str | None:
    """Why ``sweep.<key>: values`` is refused, or None. Keys are checked against
    the fields of the training config (``Config``), so a typo fails before
    anything runs instead of training N identical runs."""
    where = f"sweep.{key}"
    if not isinstance(values, list):
        return f"{where}: expected a list of values (got {values!r})"
    if not values:
        return f"{where}: empty list (give at least one value)"
    seen = []
    for v in values:
        if v in seen:
            return f"{where}: value {v!r} given twice"
        seen.append(v)
    for prefix, why in RESERVED.items():
        if key == prefix or key.startswith(prefix + "."):
            return f"{where}: cannot be swept ({why})"
    model: type[BaseModel] = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        at = ".".join(parts[:i]) or "train"
        if part not in model.model_fields:
            return (f"{where}: unknown key: {at} has no field '{part}' (fields: {', '.join(model.model_fields)}); "
                    "sweep keys are training-config keys, relative to train:")
        annotation = model.model_fields[part].annotation
        if _is_dict_field(annotation):
            return None  # a free-form mapping (preference_loss.options, rollout.vllm): any key below it
        sub = _model_of(annotation)
        last = i == len(parts) - 1
        if sub is not None and last:
            return f"{where}: a section, not a setting: sweep one of its keys ({', '.join(sub.model_fields)})"
        if sub is None and not last:
            return f"{where}: unknown key: {'.'.join(parts[:i + 1])} is a setting, not a section"
        if sub is not None:
            model = sub
    return None


def _is_dict_field(annotation) -> bool:
    return any(typing.get_origin(t) is dict for t in (annotation, *typing.get_args(annotation)))


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested mappings as dotted keys: ``{ewc: {strength: [1, 10]}}`` -> ``{"ewc.strength": [1, 10]}``
    (a ``key=value`` override ``sweep.ewc.strength=[1,10]`` arrives nested)."""
    out: dict = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_sweep(sweep: dict[str, list]) -> list[str]:
    """Every problem of a ``sweep:`` mapping, one message per key."""
    return [msg for k, v in sweep.items() if (msg := key_error(k, v))]


def grid(sweep: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the swept values, in the order given (the first key slowest)."""
    keys = list(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def fmt_value(v: Any) -> str:
    """A value as YAML would write it inline (``true``, ``null``, ``1e-05``, ``10``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


def label(method: str, setting: dict[str, Any]) -> str:
    """``hbat-dpo[ewc.strength=10]``; the method's name alone when nothing is swept for it."""
    if not setting:
        return method
    return f"{method}[{','.join(f'{k}={fmt_value(v)}' for k, v in setting.items())}]"


def folder(setting: dict[str, Any]) -> str:
    """The run folder level of a setting under ``runs/<method>/`` (no path separators)."""
    return ",".join(f"{k}={fmt_value(v)}" for k, v in setting.items()).replace("/", "_").replace("\\", "_")


def method_of(name: str) -> str:
    """The method of a run label (``hbat-dpo[ewc.strength=10]`` -> ``hbat-dpo``)."""
    return name.split("[", 1)[0]


def sections_read(cfg: Config) -> set[str]:
    """The step sections a run with this training config reads (module doc)."""
    out: set[str] = set()
    for p in build_plan(cfg):
        out.add(runner_class(p.kind, cfg.schedule.preference).section)
        if p.sft_mix or p.joint_budget:
            out.add(INSTRUCTION_STEP.section)
        if p.anchor or p.record_anchor:
            out.add("ewc")
    return out


def key_matters(key: str, configs: list[Config]) -> bool:
    """Whether ``key`` can change a method's training: ``configs`` are its
    training configs with each of the key's values applied."""
    section = key.split(".", 1)[0]
    return section not in step_sections() or any(section in sections_read(c) for c in configs)


@dataclass(frozen=True)
class SweepRun:
    """One method at one setting (all seeds of it share the label)."""

    method: Any  # compare's MethodSpec
    setting: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return label(self.method.name, self.setting)


def expand(methods: list, sweep: dict[str, list],
           train_config: Callable[[Any, dict[str, Any]], Config]) -> list[SweepRun]:
    """Methods x settings, in method order then swept-value order; a method
    gets only the keys that matter to it (``key_matters``), so a method the
    sweep cannot change appears once. ``train_config(method, setting)`` builds
    and validates that run's training config (it raises on a bad value)."""
    out: list[SweepRun] = []
    for m in methods:
        keys = [k for k in sweep if key_matters(k, [train_config(m, {k: v}) for v in sweep[k]])]
        for setting in grid({k: sweep[k] for k in keys}):
            out.append(SweepRun(m, setting))
    return out
