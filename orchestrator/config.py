"""The one validated config tree (pydantic). Each section belongs to one
component; unknown keys and bad values fail before any actor starts, with the
dotted key in the message. The resolved tree is saved in the run folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A bad config: names the file and the dotted key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(Section):
    """peft LoRA options; ``target_modules: all-linear`` adapts every linear layer."""

    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"
    modules_to_save: list[str] = []  # modules trained in full next to the adapters


class ModelConfig(Section):
    """Which weights each role loads and in what precision. ``reward: null`` trains one first.

    ``precision`` (see ``hbat.models.precision``): ``fp32``; ``bf16-mixed`` --
    fp32 master weights and AdamW state, bf16 autocast compute, bf16 frozen
    roles (the choice for GPUs); ``bf16-pure`` -- weights and optimizer state
    in bf16, *lossy*: most small updates round away. ``dtype`` is the
    deprecated spelling (float32 -> fp32, bfloat16 -> bf16-pure, auto ->
    bf16-mixed).
    """

    policy: str = "smollm2-135m"
    reference: str | None = None  # default: same as policy
    reward: str | None = None  # a trained reward checkpoint; None -> stage reward_model trains one
    critic: str | None = None  # default: the reward model if any, else the policy
    precision: Literal["fp32", "bf16-mixed", "bf16-pure"] = "fp32"
    dtype: Literal["auto", "float32", "bfloat16"] | None = None  # deprecated alias of precision
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    # policy/reference forwards run rows' real tokens end to end instead of padded
    # (models/packing.py): auto -- where the attention kernel allows it and it saves rows
    packing: Literal["auto", "on", "off"] = "auto"
    disable_dropout: bool = True  # trainable roles: dropout off, so train/eval forwards agree (TRL's default)

    @model_validator(mode="before")
    @classmethod
    def _dtype_alias(cls, data):
        if isinstance(data, dict) and data.get("dtype") is not None:
            from hbat.models.precision import DTYPE_ALIASES

            mapped = DTYPE_ALIASES.get(data["dtype"])
            if mapped is None:
                return data  # the Literal check names the bad value
            if data.get("precision") not in (None, mapped):
                raise ValueError(f"model.dtype '{data['dtype']}' (deprecated) contradicts model.precision "
                                 f"'{data['precision']}'; remove model.dtype")
            import warnings

            msg = f"model.dtype is deprecated: use model.precision: {mapped}"
            if mapped == "bf16-pure":
                msg += " (lossy: weights and AdamW state in bf16; bf16-mixed keeps fp32 master weights)"
            warnings.warn(msg, FutureWarning, stacklevel=2)
            data = {**data, "precision": mapped, "dtype": None}
        return data


class ReferenceConfig(Section):
    """When the frozen reference (the KL / DPO anchor) is reset to the current policy.

    ``never``: always the starting model. ``after_sft_stage``: the policy at
    the end of the instruction stage (InstructGPT / DeepSpeed-Chat: RLHF is
    regularised toward the SFT model). ``each_round``: the policy at the end
    of every instruction phase, before that round's preference phase (the HBAT
    authors' code reloads actor and reference from each instruction phase's
    output). ``auto``: the faithful choice per schedule -- two_stage/ptx
    after_sft_stage, hbat/alternating each_round, joint/sft_only never.
    """

    refresh: Literal["auto", "never", "after_sft_stage", "each_round"] = "auto"


class DataConfig(Section):
    sft: str | None = None  # prompt/response or messages
    preference: str | None = None  # prompt/chosen/rejected (DPO family, RM training)
    pointwise: str | None = None  # prompt/response/label (pointwise_dpo, ulma)
    prompts: str | None = None  # prompts for PPO rollouts
    eval_sft: str | None = None  # held-out demonstrations: eval/sft_loss after each phase
    eval_prompts: str | None = None  # held-out prompts: eval/reward of greedy answers after each phase
    max_prompt_len: int = Field(256, gt=0)
    max_len: int = Field(512, gt=0)
    chat_template: bool = True
    on_overlong: Literal["error", "truncate", "skip"] = "error"
    limit: int | None = Field(None, gt=0)


class RoleResources(Section):
    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    replicas: int = Field(1, ge=1)


class FSDPConfig(Section):
    """How a trainable role's worker group shards its model (PyTorch FSDP2).

    ``enabled``: ``auto`` shards a role that has more than one replica (its
    ranks form one ``torch.distributed`` group: gloo on CPU, NCCL on GPU);
    ``true`` shards even one replica (a world-size-1 group, e.g. to use CPU
    offload); ``false`` refuses ``replicas > 1`` for trainable roles.
    ``cpu_offload``: parameters, gradients and optimizer state live on the
    host and stream to the device per layer (FSDP2 ``CPUOffloadPolicy``).
    ``reshard_after_forward``: free the gathered layer after its forward
    (ZeRO-3, least memory) or keep it for the backward (ZeRO-2-like, less
    communication).
    """

    enabled: Literal["auto"] | bool = "auto"
    cpu_offload: bool = False
    reshard_after_forward: bool = True


class ResourcesConfig(Section):
    """Placement: one placement-group bundle per colocation group (docs/architecture.md §5).

    A trainable role (policy, critic) with ``replicas: N`` is one data-parallel
    worker group of N ranks sharded with FSDP2 (``fsdp``); the frozen roles
    (reference, reward, rollout) with ``replicas: N`` each score or sample a
    slice of every batch.
    """

    address: str | None = None  # None -> local Ray
    num_cpus: int | None = None  # for local Ray
    policy: RoleResources = RoleResources(num_cpus=0.4)
    reference: RoleResources = RoleResources(num_cpus=0.2)
    reward: RoleResources = RoleResources(num_cpus=0.2)
    critic: RoleResources = RoleResources(num_cpus=0.2)
    rollout: RoleResources = RoleResources(num_cpus=0.2)
    colocate: list[list[Literal["policy", "reference", "reward", "critic", "rollout"]]] = []
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    torch_threads: int = Field(2, ge=1)
    fsdp: FSDPConfig = FSDPConfig()
    gpu_memory_gb: float | None = Field(None, gt=0)  # per device, for `hbat plan` (null: 80)

    @model_validator(mode="after")
    def _colocate_once(self):
        seen: set[str] = set()
        for group in self.colocate:
            for role in group:
                if role in seen:
                    raise ValueError(f"role '{role}' appears in two colocate groups")
                seen.add(role)
        return self


class OptimConfig(Section):
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(0, ge=0)
    scheduler: Literal["constant", "cosine", "linear"] = "constant"
    grad_clip: float = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    # micro-batch by tokens: a rank's share of a batch is split so that no
    # micro-batch holds more than this many (padded) tokens; at least grad_accum
    max_tokens_per_micro: int | None = Field(None, gt=0)


class SFTConfig(Section):
    batch_size: int = Field(8, gt=0)
    steps_per_phase: int | None = Field(None, gt=0)  # None -> one pass over the shard
    optim: OptimConfig = OptimConfig(lr=2e-5)


class RewardModelConfig(Section):
    """Stage: Bradley-Terry reward-model training on ``data.preference``."""

    epochs: int = Field(1, gt=0)
    batch_size: int = Field(8, gt=0)
    max_steps: int | None = Field(None, gt=0)
    optim: OptimConfig = OptimConfig(lr=1e-5)
    rule_rewards: list[str] = []  # import paths "pkg.module:fn" added to the model score
    rule_weight: float = 1.0
    model_weight: float = 1.0


class PPOConfig(Section):
    prompts_per_step: int = Field(8, gt=0)
    steps_per_phase: int | None = Field(None, gt=0)  # None -> one pass over the prompt shard
    samples_per_prompt: int = Field(1, gt=0)
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    ppo_epochs: int = Field(1, gt=0)
    mini_batch_size: int = Field(8, gt=0)
    clip_eps: float = Field(0.2, gt=0)
    value_clip_eps: float = Field(0.2, gt=0)
    kl_coef: float = Field(0.05, ge=0)
    missing_eos_penalty: float | None = Field(None, ge=0)  # subtracted from the score of responses cut at max_new_tokens
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    advantage: Literal["gae", "grpo", "rloo"] = "gae"
    whiten_scores: bool = False
    score_clip: float | None = Field(None, gt=0)
    # Whitening advantages over the batch (token-weighted): right for GAE, wrong
    # for group baselines (long responses dominate the mean and flip signs), so
    # null means: on for gae, off for grpo/rloo (TRL, OpenRLHF).
    normalize_advantages: bool | None = None
    group_std_scaling: bool = True  # grpo: divide by the group's std; false = Dr. GRPO (Liu et al. 2025)
    optim: OptimConfig = OptimConfig(lr=1e-6)
    critic_optim: OptimConfig = OptimConfig(lr=5e-6)

    @model_validator(mode="after")
    def _group_baselines_need_groups(self):
        if self.advantage in ("grpo", "rloo") and self.samples_per_prompt < 2:
            raise ValueError(f"advantage '{self.advantage}' needs samples_per_prompt >= 2")
        return self

    @property
    def whiten_advantages(self) -> bool:
        """``normalize_advantages`` resolved per advantage method (see the field)."""
        return self.advantage == "gae" if self.normalize_advantages is None else self.normalize_advantages

    def optimizer_steps_per_step(self, prompts: int | None = None) -> int:
        """Optimizer steps one PPO step on ``prompts`` prompts (default ``prompts_per_step``)
        makes: epochs x mini-batches of its rollout (LR schedules count these)."""
        rollout = (prompts or self.prompts_per_step) * self.samples_per_prompt
        return self.ppo_epochs * -(-rollout // self.mini_batch_size)


class PreferenceLossConfig(Section):
    """The offline preference phases: their loss (DPO, cDPO, IPO, SLiC-HF,
    point-wise DPO, ULMA), its options, batch size, budget and optimizer
    (section ``preference_loss``; ``dpo`` is its deprecated name).

    Unset options (``null``) take the loss's own registry default
    (``hbat.objectives.registry``): e.g. ``beta`` is 0.1 for DPO/IPO and 1 for
    SLiC-HF. ``options`` passes loss-specific keywords (SLiC's ``delta`` and
    ``reg_weight``); ``average_logps`` uses per-token mean instead of summed
    response log-probs (null: the registry's choice -- true for IPO as in
    TRL, false otherwise).

    ``curriculum`` orders pairwise data from easy to hard across the
    preference phases' shards and steps (``hbat.orchestrator.data.curriculum``):
    by the record's ``strength_gap`` or ``score_gap`` (as ``hbat build-pairs``
    writes them); ``none`` keeps the seeded random batches.
    """

    loss: str = "dpo"  # a name from hbat.objectives registry
    curriculum: Literal["none", "strength_gap", "score_gap"] = "none"
    beta: float | None = Field(None, gt=0)
    label_smoothing: float | None = Field(None, ge=0, lt=0.5)
    average_logps: bool | None = None
    options: dict[str, float] = {}
    batch_size: int = Field(8, gt=0)
    steps_per_phase: int | None = Field(None, gt=0)
    optim: OptimConfig = OptimConfig(lr=5e-7)


class EWCConfig(Section):
    """HBAT's modified EWC (docs/architecture.md §2).

    ``method``: ``modified`` -- importance = how far the other objective's
    last phase moved each tensor, normalised by ``normalize`` and capped at
    ``max_weight`` (the paper's text); ``modified_code`` -- the authors'
    released code: importance accumulates over rounds, ``scaled_softmax``
    normalisation times ``max_weight`` (default 100 there); ``fisher`` --
    original EWC, diagonal Fisher of ``fisher_loss`` on ``fisher_batches``
    batches of the phase's data; ``none``.
    ``fisher_loss``: ``phase`` -- the phase's own objective (SFT NLL; the
    preference loss with reference log-probs; PPO: the NLL of the policy's own
    samples, i.e. the model Fisher), or ``sft`` -- the chosen responses' SFT
    likelihood in DPO phases. ``lora_penalty``: with LoRA, anchor the
    effective weight change ``scale * B @ A`` of each adapted module
    (``delta``, invariant to rescaling A against B) or the factors themselves
    (``factors``).
    """

    method: Literal["modified", "modified_code", "fisher", "none"] = "modified"
    strength: float = Field(1.0, ge=0)  # lambda
    normalize: Literal["max", "softmax", "rank", "scaled_softmax"] | None = None  # null: max (scaled_softmax for modified_code)
    max_weight: float | None = Field(None, gt=0)  # paper's ewc_max_weight; null: 1 (100 for modified_code)
    softmax_scale: float | None = Field(None, gt=0)  # scaled_softmax factor; null: the authors' code's
    fisher_batches: int = Field(4, gt=0)
    fisher_loss: Literal["phase", "sft"] = "phase"
    lora_penalty: Literal["delta", "factors"] = "delta"
    # anchors stay in host memory and visit the device tensor by tensor for the
    # penalty (less device memory, a host-to-device copy per step)
    offload_anchors: bool = False

    @property
    def resolved_normalize(self) -> str:
        return self.normalize or ("scaled_softmax" if self.method == "modified_code" else "max")

    @property
    def resolved_max_weight(self) -> float:
        return self.max_weight if self.max_weight is not None else (100.0 if self.method == "modified_code" else 1.0)

    @property
    def accumulate(self) -> bool:
        """Importance adds up over rounds (the authors' code)."""
        return self.method == "modified_code"


class ScheduleConfig(Section):
    """``name``: a schedule of ``orchestrator/schedules`` (``SCHEDULES``);
    ``preference``: the algorithm of its preference phases, a registered step
    runner (``orchestrator/steps``: ``ppo`` covers PPO/GRPO/RLOO, ``dpo`` the
    offline losses of the ``dpo`` section)."""

    name: str = "hbat"
    preference: str = "ppo"
    rounds: int = Field(10, gt=0)  # T in the paper
    sft_warmup_steps: int = Field(0, ge=0)  # optional SFT warm-up phase on all instruction data first
    mix_coef: float = Field(0.5, ge=0)  # ptx / joint: weight of the SFT term

    @field_validator("name")
    @classmethod
    def _known_schedule(cls, v: str) -> str:
        from hbat.orchestrator.schedules import SCHEDULES

        if v not in SCHEDULES:
            raise ValueError(f"unknown schedule '{v}' (known: {', '.join(SCHEDULES)})")
        return v

    @field_validator("preference")
    @classmethod
    def _known_algorithm(cls, v: str) -> str:
        from hbat.orchestrator.steps import PREFERENCE_STEPS

        if v not in PREFERENCE_STEPS:
            raise ValueError(f"unknown preference algorithm '{v}' (known: {', '.join(PREFERENCE_STEPS)})")
        return v


class LoggingConfig(Section):
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "hbat"
    log_every: int = Field(1, gt=0)
    progress: bool = True


class RunConfig(Section):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    checkpoint_every: int = Field(0, ge=0)  # steps; 0 -> only after each phase
    keep_checkpoints: int = Field(2, ge=1)  # the newest complete checkpoints kept; older ones are deleted


class RolloutConfig(Section):
    """Generation backend: transformers ``generate`` on CPU, vLLM on GPU."""

    backend: Literal["auto", "hf", "vllm"] = "auto"
    vllm: dict[str, Any] = {}  # passed to vllm.LLM (gpu_memory_utilization, tensor_parallel_size, ...)


class Config(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    resources: ResourcesConfig = ResourcesConfig()
    rollout: RolloutConfig = RolloutConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    sft: SFTConfig = SFTConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    ppo: PPOConfig = PPOConfig()
    preference_loss: PreferenceLossConfig = PreferenceLossConfig()
    reference: ReferenceConfig = ReferenceConfig()
    ewc: EWCConfig = EWCConfig()
    logging: LoggingConfig = LoggingConfig()


    @model_validator(mode="before")
    @classmethod
    def _dpo_section_alias(cls, data):
        """``dpo:`` is the deprecated name of ``preference_loss:`` (it configures
        IPO, SLiC, ULMA... too). Its keys are merged over ``preference_loss``'s,
        so an old ``dpo.beta=...`` override still applies to a new config."""
        if isinstance(data, dict) and "dpo" in data:
            import warnings

            old = data.get("dpo") or {}
            new = data.get("preference_loss") or {}
            if not isinstance(old, dict) or not isinstance(new, dict):
                return data  # the section's own validation names the bad value
            warnings.warn("config section 'dpo' is deprecated: use 'preference_loss' (same keys)",
                          FutureWarning, stacklevel=2)
            data = {k: v for k, v in data.items() if k != "dpo"}
            data["preference_loss"] = {**new, **old}
        return data

    @model_validator(mode="after")
    def _data_for_schedule(self):
        d, s = self.data, self.schedule
        if not d.sft:
            raise ValueError(f"schedule '{s.name}' needs data.sft")
        if s.name != "sft_only":
            from hbat.orchestrator.steps import PREFERENCE_STEPS

            errors = PREFERENCE_STEPS[s.preference].config_errors(self)
            if errors:
                raise ValueError("; ".join(errors))
        if d.max_prompt_len >= d.max_len:
            raise ValueError("data.max_prompt_len must be smaller than data.max_len")
        return self

    @model_validator(mode="after")
    def _worker_groups(self):
        """What a data-parallel (sharded) trainable role needs: every batch it
        trains on splits into at least one row (pair) per rank."""
        r = self.resources
        for role in ("policy", "critic"):
            n = getattr(r, role).replicas
            if n > 1 and r.fsdp.enabled is False:
                raise ValueError(f"resources.{role}.replicas={n} needs resources.fsdp.enabled auto or true "
                                 "(a trainable role's replicas are the ranks of one sharded worker group)")
        if self.model.lora is not None and self.sharded("policy"):
            raise ValueError("model.lora with a sharded policy (resources.policy.replicas > 1 or "
                             "resources.fsdp.enabled: true) is not supported yet: use full fine-tuning or one replica")
        n = r.policy.replicas
        if n > 1:
            sizes = {"sft.batch_size": self.sft.batch_size, "preference_loss.batch_size": self.preference_loss.batch_size,
                     "ppo.mini_batch_size": self.ppo.mini_batch_size}
            small = [f"{k}={v}" for k, v in sizes.items() if v < n]
            if small:
                raise ValueError(f"{', '.join(small)} < resources.policy.replicas={n}: every rank of the policy "
                                 "group needs at least one row (pair) of each batch")
        for role, key, size in (("critic", "ppo.mini_batch_size", self.ppo.mini_batch_size),
                                ("reward", "reward_model.batch_size", self.reward_model.batch_size)):
            n = getattr(r, role).replicas
            if self.sharded(role) and size < n:
                raise ValueError(f"{key}={size} < resources.{role}.replicas={n}: every rank of the {role} "
                                 "group needs at least one row (pair) of each batch")
        return self

    def sharded(self, role: str) -> bool:
        """Whether ``role``'s worker group shards its model with FSDP2."""
        e = self.resources.fsdp.enabled
        return e is True or (e == "auto" and getattr(self.resources, role).replicas > 1)

    @property
    def reward_uses_model(self) -> bool:
        """Whether the reward includes a learned model: given (``model.reward``) or
        trainable (``data.preference``), with a non-zero ``reward_model.model_weight``.
        Otherwise the reward is ``reward_model.rule_rewards`` alone: no reward model
        is trained or loaded, and no preference data is needed."""
        rm = self.reward_model
        return rm.model_weight != 0 and (self.model.reward is not None or self.data.preference is not None)

    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k, {}), dict):
            raise ConfigError(f"override '{dotted}': '{k}' is not a section")
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``key.sub=value`` strings; values are parsed as YAML (numbers, bools, lists)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        value = load_yaml_text(raw, f"override '{item}'") if raw != "" else None
        out.append((key, value))
    return out


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an
    error. Plain PyYAML keeps the last value, so a second ``ppo:`` block would
    silently drop the first one -- the user would train with settings they
    never meant."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<": merge keys may repeat
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: PyYAML reports it itself
                    continue
                if first is not None:
                    raise ConfigError(
                        f"{self.name}, line {key_node.start_mark.line + 1}: duplicate key '{key}' "
                        f"(first given on line {first}); a YAML mapping keeps only the last one"
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, name: str):
    """Parse YAML with duplicate keys refused; errors name ``name`` (the file),
    not PyYAML's ``"<unicode string>"``."""
    loader = _StrictLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:  # one line: where, then what
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}, line {mark.line + 1}, column {mark.column + 1}" if mark else name
        what = "; ".join(x for x in (exc.context, exc.problem) if x)
        raise ConfigError(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()


def read_yaml_mapping(path: str | Path, what: str = "mapping of sections") -> dict:
    """A YAML file whose top level is a mapping; any other content is a ConfigError naming the file."""
    p = Path(expand_path(str(path), "--config"))
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    tree = load_yaml_text(text, str(p)) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: top level must be a {what}")
    return tree


def expand_path(value: str, key: str) -> str:
    """``~`` and ``$VAR`` / ``${VAR}`` in a path, as a shell would expand them.

    An unset variable is an error naming the key: left unexpanded, it would
    surface later as a puzzling "file not found: $DATA/sft.jsonl".
    """
    out = os.path.expanduser(os.path.expandvars(value))
    missing = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", out)
    if missing:
        raise ConfigError(f"{key}: environment variable ${missing[0]} in '{value}' is not set")
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML, apply ``key=value`` overrides, validate; errors name the key."""
    tree: dict = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        tree = read_yaml_mapping(path)
        _resolve_relative_paths(tree, Path(path).parent)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    expand_paths_in_tree(tree)
    return validate_config(tree, source)


def validation_message(exc: ValidationError) -> str:
    """One line per error: the dotted key, what is wrong and (for leaves) the value given."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            got = "" if isinstance(err.get("input"), dict) else f" (got {err['input']!r})"
            lines.append(f"  {key}: {err['msg']}{got}")
    return "\n".join(lines)


def validate_config(tree: dict, source: str = "<config>") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {source}:\n{validation_message(exc)}") from None


_PATH_KEYS = {"data": ("sft", "preference", "pointwise", "prompts", "eval_sft", "eval_prompts")}
#: every key that names a file or folder: ``~`` and ``$VAR`` expand in these
EXPANDED_KEYS = {**_PATH_KEYS, "model": ("policy", "reference", "reward", "critic"), "run": ("output_dir",)}


def expand_paths_in_tree(tree: dict) -> None:
    """Expand ``~`` and environment variables in every path key of a config tree (in place)."""
    for section, keys in EXPANDED_KEYS.items():
        node = tree.get(section)
        if not isinstance(node, dict):
            continue
        for k in keys:
            if isinstance(node.get(k), str):
                node[k] = expand_path(node[k], f"{section}.{k}")


def _resolve_relative_paths(tree: dict, base: Path) -> None:
    """Data paths in a YAML file are relative to the repo/cwd if they exist there,
    else to the config file's folder."""
    for section, keys in _PATH_KEYS.items():
        node = tree.get(section)
        if not isinstance(node, dict):
            continue
        for k in keys:
            v = node.get(k)
            if isinstance(v, str):
                v = node[k] = expand_path(v, f"{section}.{k}")
            if isinstance(v, str) and not Path(v).is_absolute() and not Path(v).exists() and (base / v).exists():
                node[k] = str(base / v)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
