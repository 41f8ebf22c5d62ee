"""The ``hbat build-pairs`` config: one validated pydantic tree.

Top-level keys (overrides as for ``hbat train``: ``output_dir=runs/x``,
``strategies.prefix.bad="..."``, ``select=[prefix,refine]``):

* ``prompts`` (a prompts file: ``{"prompt": str | messages, "id"?, ...}``;
  other fields reach rule scorers as ``meta``), ``limit``, ``output_dir``;
* ``models``: named sources -- ``path`` (hub id, folder, ``.gguf``,
  ``smollm2-135m``) or ``derive`` (a weaker copy of another model, built once
  into ``output_dir/models/<name>``), each with an optional strength ``rank``
  (1 = strongest);
* ``strategies``: one optional section per name in
  :data:`~hbat.orchestrator.pairs.strategies.STRATEGIES`; a present section is
  a selected strategy (``select`` narrows them further);
* ``sampling`` (defaults for every strategy), ``batch_size``, ``seed``,
  ``scorer`` (rule functions and/or a reward model: both sides get a score),
  ``pointwise`` (also write one scored record per response), ``resources``.

Every error is one line naming the file and the dotted key, and happens before
any model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, create_model, model_validator

from hbat.orchestrator.config import ConfigError, Section, _set_dotted, parse_overrides, read_yaml_mapping
from hbat.orchestrator.pairs.strategies import STRATEGIES, STRATEGY_NAMES, Decoding


class DeriveSpec(Section):
    """A weaker model made from ``base`` (see ``hbat.orchestrator.pairs.derive``)."""

    base: str  # hub id, folder or smollm2-135m (not another derived model)
    keep_layers: int | None = Field(None, gt=0)  # keep the first k decoder layers: a smaller model of the family
    noise: float | None = Field(None, gt=0)  # add N(0, (noise * std(tensor))^2) to every weight: same size, weaker
    seed: int = 0

    @model_validator(mode="after")
    def _something(self):
        if self.keep_layers is None and self.noise is None:
            raise ValueError("derive needs keep_layers, noise or both")
        return self


class ModelSource(Section):
    path: str | None = None
    derive: DeriveSpec | None = None
    rank: int | None = Field(None, ge=1)  # strength rank, 1 = strongest (strength gaps of model-level pairs)

    @model_validator(mode="after")
    def _one(self):
        if (self.path is None) == (self.derive is None):
            raise ValueError("give exactly one of path or derive")
        return self


class ScorerConfig(Section):
    """Scores for both sides of every pair: ``model_weight * RM + rule_weight * sum(rules)``."""

    rules: list[str] = []  # "pkg.module:fn", called as fn(prompt_text, response, meta) -> float
    reward_model: str | None = None  # a trained reward model folder (e.g. runs/x/reward_model)
    rule_weight: float = 1.0
    model_weight: float = 1.0

    @property
    def enabled(self) -> bool:
        return bool(self.rules) or self.reward_model is not None


class PointwiseOutput(Section):
    """Point-wise records (``{"prompt", "response", "label", "score", ...}``) from the same generations.

    ``label``: ``side`` -- 1 for a chosen response, 0 for a rejected one
    (binary); ``score`` -- the score clipped to [0, 1] (rule scores already
    are); ``sigmoid`` -- sigmoid of the score (reward-model logits).
    """

    enabled: bool = True
    label: Literal["side", "score", "sigmoid"] = "side"


class BuildResources(Section):
    address: str | None = None
    num_cpus: int | None = None  # local Ray
    actor_cpus: float = Field(0.5, gt=0)  # per rollout actor (one per model)
    torch_threads: int = Field(2, ge=1)
    backend: Literal["auto", "hf", "vllm"] = "auto"


StrategiesConfig = create_model(
    "StrategiesConfig", __base__=Section,
    **{name: (cls.Options | None, None) for name, cls in STRATEGIES.items()},
)
StrategiesConfig.__doc__ = "One optional section per strategy name (the registry's names, nothing else)."


class BuildPairsConfig(Section):
    name: str = "pairs"
    prompts: str
    output_dir: str = "runs/pairs"
    limit: int | None = Field(None, gt=0)  # the first N prompt records
    batch_size: int = Field(8, gt=0)  # prompts per generation batch (one commit each)
    seed: int = 0
    models: dict[str, ModelSource] = {"base": ModelSource(path="smollm2-135m")}
    strategies: StrategiesConfig = StrategiesConfig()
    select: list[Literal[STRATEGY_NAMES]] | None = None  # null: every configured strategy
    sampling: Decoding = Decoding()
    scorer: ScorerConfig = ScorerConfig()
    pointwise: PointwiseOutput = PointwiseOutput()
    resources: BuildResources = BuildResources()
    progress: bool = True

    @model_validator(mode="after")
    def _consistent(self):
        configured = [n for n in STRATEGY_NAMES if getattr(self.strategies, n) is not None]
        if not configured:
            raise ValueError(f"strategies: configure at least one of {', '.join(STRATEGY_NAMES)}")
        for n in self.select or []:
            if n not in configured:
                raise ValueError(f"select: '{n}' has no section under strategies")
        for name, src in self.models.items():
            if src.derive is not None and src.derive.base in self.models:
                raise ValueError(f"models.{name}.derive.base: name a model path, not another entry of models")
        for n in self.selected():
            for m in STRATEGIES[n](getattr(self.strategies, n)).model_names():
                if m not in self.models:
                    raise ValueError(f"strategies.{n}: model '{m}' is not defined under models "
                                     f"(defined: {', '.join(self.models) or 'none'})")
        if self.pointwise.enabled and self.pointwise.label != "side" and not self.scorer.enabled:
            raise ValueError(f"pointwise.label '{self.pointwise.label}' needs scorer.rules or scorer.reward_model")
        return self

    def selected(self) -> list[str]:
        """Strategy names to run, in registry order."""
        configured = [n for n in STRATEGY_NAMES if getattr(self.strategies, n) is not None]
        return [n for n in configured if self.select is None or n in self.select]

    def decoding(self, name: str) -> Decoding:
        return getattr(self.strategies, name).sampling or self.sampling

    def generation_fingerprint(self) -> dict:
        """What decides the generated rows: a resumed build must use the same."""
        d = self.model_dump(mode="json")
        return {k: d[k] for k in ("prompts", "models", "strategies", "sampling", "scorer", "pointwise", "seed")}


def _one_line(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-"))
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        got = "" if isinstance(err.get("input"), (dict, list)) or err["type"] == "extra_forbidden" \
            else f" (got {err['input']!r})"
        parts.append(f"{key}: {msg}{got}" if key else msg)
    return f"{source}: " + "; ".join(parts)


_PATH_KEYS = ("prompts",)


def load_build_config(path: str | Path, overrides: list[str] | None = None) -> BuildPairsConfig:
    """Read YAML, apply ``key=value`` overrides, validate; a ConfigError is one line naming file and key."""
    tree = read_yaml_mapping(path)
    base = Path(path).parent
    for k in _PATH_KEYS:
        v = tree.get(k)
        if isinstance(v, str) and not Path(v).is_absolute() and not Path(v).exists() and (base / v).exists():
            tree[k] = str(base / v)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    try:
        return BuildPairsConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, str(path))) from None
