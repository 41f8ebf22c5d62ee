"""``hbat plan``: a dry-run estimate of memory per device and of the placement.

Nothing here starts Ray or loads a model: the numbers are arithmetic on a
model's ``config.json`` and on the training config, so a run can be sized
before it asks a cluster for GPUs. They are *estimates* (within tens of per
cent of what ``torch.cuda.max_memory_allocated`` reports, not exact): the
allocator's fragmentation, CUDA context (~0.5-1 GiB per process), NCCL
buffers and temporary tensors of single kernels are not counted.

Units: bytes internally; the table prints GiB (2**30 bytes), and
``--gpu-memory-gb`` / ``resources.gpu_memory_gb`` is read in the same unit.

Model size (:func:`param_count`), for Llama/Qwen2/Mistral-style decoders with
``d = head_dim`` (or ``hidden_size / num_attention_heads``), ``h`` hidden,
``i`` intermediate, ``L`` layers, ``a`` heads, ``k`` key/value heads, ``V``
vocabulary::

    per layer = h*a*d + 2*h*k*d + a*d*h      (q, k, v, o projections)
              + 3*h*i                        (SwiGLU MLP: gate, up, down)
              + 2*h                          (two RMSNorms)
              + (a*d + 2*k*d)                (q/k/v biases: Qwen2, attention_bias)
    total     = V*h (embeddings) + L*per layer + h (final norm)
              + V*h (lm_head, only when tie_word_embeddings is false)

A reward model or critic is the same backbone with a scalar head instead of
the lm_head: ``total - V*h (if untied) + h``.

Per trainable role (policy; critic; reward-model training), per device, with
``N`` = the role's replicas when the role is sharded (``Config.sharded``),
else 1 (the reward-model stage is a worker group over the reward role's
replicas when that role is sharded), ``P`` its parameter count (LoRA: the frozen base is
held in the weights' dtype and only the adapters, :func:`lora_params`, have
gradients, AdamW state and anchors):

- weights: ``4 P / N`` (fp32 master weights; ``bf16-pure``: 2 B);
- gradients: the weights' dtype, ``4 P / N`` (FSDP2 reduces in fp32);
- optimizer: AdamW's two moments, ``8 P / N`` (``bf16-pure``: 4 B);
- gathered: the compute copy of parameters that is alive at once. Sharded:
  FSDP2 all-gathers one decoder layer at a time (plus the next, prefetched)
  in the compute dtype (bf16 under ``bf16-mixed``: MixedPrecisionPolicy), and
  the root module (embeddings, final norm, lm_head) stays gathered through
  forward and backward: ``c * (root + 2 * layer)``; with
  ``reshard_after_forward: false`` every layer stays gathered until its
  backward: ``c * P``. Not sharded under ``bf16-mixed``: autocast caches a
  bf16 copy of every weight it casts during the forward: ``2 P``;
- EWC anchors (policy only, ``ewc.method != none``): up to two anchors (one
  per phase kind) of ``4 P / N`` each on the device, or 0 on the device with
  ``ewc.offload_anchors`` (they are then host memory); the phase-start
  snapshot of a phase with EWC is always host memory (``4 P / N``);
- activations of one micro-batch of ``T = rows * seq`` tokens, in the compute
  dtype (``c`` = 2 B for bf16, 4 B for fp32). Elements saved for backward per
  token and decoder layer (SDPA memory-efficient / flash attention, so no
  ``seq x seq`` score matrix; eager attention would add ``2 * a * seq``)::

      e = 6 h + 2 k d + 4 i
          (norm in/out twice, q, k, v, attention output; MLP gate, up,
           SiLU(gate), SiLU(gate) * up)

  without gradient checkpointing: ``L * T * e * c``; with it, only each
  layer's input is kept and one layer is recomputed at a time:
  ``L * T * h * c + T * e * c``;
- logits: only the scored cells are projected through the vocabulary
  (``models/scoring.kept_logits``: response tokens, no prompt, pad or
  post-EOS position), bounded per row by ``ppo.max_new_tokens + 1`` for
  PPO batches and by the whole ``data.max_len`` for SFT, preference and
  reward batches (an upper bound: a row's response is shorter). Per cell
  ``V * (c + 4 + 4)`` -- the lm_head output in the compute dtype, its
  fp32 upcast (``token_logprobs``) and the fp32 log-softmax kept for the
  backward (``4 + 4`` under fp32: no separate upcast). Reward models and
  critics have a scalar head: no vocabulary logits.

Rows of a micro-batch: a batch of ``B`` rows (a pair counts two rows: chosen
and rejected) is split over the ``N`` ranks and into ``grad_accum``
micro-batches: ``ceil(ceil(B / N) / grad_accum)``; with
``optim.max_tokens_per_micro`` no micro-batch holds more than that many
padded tokens: ``min(that, max(1, budget // seq))``. Sequence length: SFT,
preference and reward-model batches ``data.max_len``; PPO batches
``data.max_prompt_len + ppo.max_new_tokens``. Each trainable role takes the
largest micro-batch over the phase kinds of the schedule (SFT, preference
loss, PPO; a ptx/joint step's two parts run one after the other, so the
larger counts).

With ``resources.fsdp.cpu_offload`` (sharded roles), weights, gradients and
optimizer state are host memory; the gathered layers, activations and logits
stay on the device.

Frozen roles hold their weights in ``precision(...).frozen_dtype_name``
(bf16 unless ``fp32``), one full copy per replica (a replica scores a slice
of each batch, it does not shard the model), and one forward's working set
at their slice of the batch: the largest layer's activations ``T * e * c``
plus, for the reference, the logits ``T * V * (c + 4 + 4)``. The reference
scores PPO rollouts (``prompts_per_step * samples_per_prompt`` rows) and
preference batches (two rows a pair); the reward model scores PPO rollouts
and probes. The rollout role on a GPU with the vLLM backend (``auto`` or
``vllm``) takes ``rollout.vllm.gpu_memory_utilization`` (vLLM's default
0.9) of the device, weights and KV cache included; with transformers
``generate`` it holds weights plus a KV cache of
``rows * seq * L * 2 * k * d * c``.

Placement: :func:`hbat.orchestrator.placement.plan_bundles` decides the
bundles; roles colocated in one bundle share its devices, so when a bundle
asks for at most one GPU their memory adds up on that device. The
reward-model stage runs before the scorers and critic start (the driver
spawns policy, reference and rollout first), so a bundle's peak is the larger
of that stage's sum and the main phases' sum. A bundle asking for a fraction
``f`` of a GPU is checked against ``f * G``: Ray may place another fractional
bundle on the same device.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hbat.orchestrator.config import Config, ConfigError, expand_path

GiB = 2**30

#: Public ``config.json`` numbers of common hub models, used only when a model
#: reference is neither a local folder nor in the local Hugging Face cache
#: (e.g. planning a cluster run from a laptop). Values are those published in
#: each repository's ``config.json`` on the Hugging Face hub (Qwen2.5 model
#: cards / configs, Meta's Llama 3.1 config, HuggingFaceTB's SmolLM2 config).
_QWEN25_7B = dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)
_LLAMA31_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
KNOWN_ARCHITECTURES: dict[str, dict] = {
    "Qwen/Qwen2.5-7B-Instruct": _QWEN25_7B,
    "Qwen/Qwen2.5-7B": _QWEN25_7B,
    "Qwen/Qwen2.5-1.5B-Instruct": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960,
                                       num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                       vocab_size=151936, tie_word_embeddings=True),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864,
                                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                       vocab_size=151936, tie_word_embeddings=True),
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(model_type="llama", hidden_size=576, intermediate_size=1536,
                                                num_hidden_layers=30, num_attention_heads=9,
                                                num_key_value_heads=3, vocab_size=49152,
                                                tie_word_embeddings=True),
}
#: the embedded short names are the same architectures
KNOWN_ARCHITECTURES["smollm2-135m"] = KNOWN_ARCHITECTURES["HuggingFaceTB/SmolLM2-135M-Instruct"]


# ------------------------------------------------------------------ model size
@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder's ``config.json`` the estimate needs."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_dim: int
    qkv_bias: bool = False
    source: str = ""  # where the numbers came from

    @classmethod
    def from_config(cls, c: dict, source: str = "") -> "ModelShape":
        c = c.get("text_config") or c
        try:
            h, a = int(c["hidden_size"]), int(c["num_attention_heads"])
            return cls(hidden=h, intermediate=int(c["intermediate_size"]), layers=int(c["num_hidden_layers"]),
                       heads=a, kv_heads=int(c.get("num_key_value_heads") or a), vocab=int(c["vocab_size"]),
                       tied=bool(c.get("tie_word_embeddings", False)), head_dim=int(c.get("head_dim") or h // a),
                       qkv_bias=bool(c.get("attention_bias")) or c.get("model_type") == "qwen2", source=source)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"config.json lacks a decoder's size ({exc})") from None

    @property
    def layer_params(self) -> int:
        h, d, a, k, i = self.hidden, self.head_dim, self.heads, self.kv_heads, self.intermediate
        attn = h * a * d + 2 * h * k * d + a * d * h + ((a * d + 2 * k * d) if self.qkv_bias else 0)
        return attn + 3 * h * i + 2 * h

    @property
    def root_params(self) -> int:
        """Parameters outside the decoder layers: embeddings, final norm, untied lm_head."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden


def param_count(shape: ModelShape, head: str = "lm") -> int:
    """Parameters of a causal LM (``head="lm"``) or of the same backbone with a
    scalar head (``head="scalar"``: reward model, critic)."""
    total = shape.root_params + shape.layers * shape.layer_params
    if head == "scalar":
        total += shape.hidden - (0 if shape.tied else shape.vocab * shape.hidden)
    return total


def lora_params(shape: ModelShape, r: int, target_modules) -> int:
    """Adapter parameters: ``r * (in + out)`` for every adapted linear layer
    (``all-linear``: q, k, v, o, gate, up, down of every layer)."""
    h, d, a, k, i = shape.hidden, shape.head_dim, shape.heads, shape.kv_heads, shape.intermediate
    dims = {"q_proj": (h, a * d), "k_proj": (h, k * d), "v_proj": (h, k * d), "o_proj": (a * d, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    names = list(dims) if target_modules == "all-linear" else [t for t in target_modules if t in dims]
    return shape.layers * sum(r * sum(dims[n]) for n in names)


def model_shape(ref: str, key: str) -> ModelShape:
    """The shape of model ``ref`` (``key`` names the config key in errors).

    Looked up, in order: an embedded short name's converted folder (else its
    entry in :data:`KNOWN_ARCHITECTURES`); a local folder's ``config.json``;
    a hub id's ``config.json`` in the local Hugging Face cache (no network);
    :data:`KNOWN_ARCHITECTURES`. Anything else is a ConfigError naming ``key``.
    """
    from hbat.models.default import EMBEDDED_MODELS, cache_root

    def read(path: Path, source: str) -> ModelShape:
        try:
            return ModelShape.from_config(json.loads(path.read_text()), source)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{key}: {path} is not a readable decoder config ({exc})") from None

    if ref in EMBEDDED_MODELS:
        cached = cache_root() / "models" / ref / "config.json"
        if cached.is_file():
            return read(cached, str(cached))
        return ModelShape.from_config(KNOWN_ARCHITECTURES[ref], f"known architecture '{ref}'")
    path = Path(expand_path(ref, key))
    if ref.endswith(".gguf"):
        raise ConfigError(f"{key}: cannot size a .gguf file without converting it; "
                          "plan with the converted folder (hbat generate --model once converts it)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{key}: {path} holds no config.json, so it is not a Hugging Face model folder")
        return read(path / "config.json", str(path / "config.json"))
    if path.exists():
        raise ConfigError(f"{key}: {path} is a file; expected a model folder with config.json")
    if ref.startswith((".", "/", "~", "$")) or ref.count("/") > 1 or "\\" in ref:
        raise ConfigError(f"{key}: model folder {path} does not exist")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id: fall through to the table
        cached = None
    if isinstance(cached, str):
        return read(Path(cached), f"Hugging Face cache ({cached})")
    if ref in KNOWN_ARCHITECTURES:
        return ModelShape.from_config(KNOWN_ARCHITECTURES[ref], f"known architecture '{ref}'")
    raise ConfigError(f"{key}: '{ref}' is not a local model folder, not in the Hugging Face cache and not a known "
                      f"architecture ({', '.join(k for k in KNOWN_ARCHITECTURES if '/' in k)}); "
                      "download its config.json or give a folder")


# ------------------------------------------------------------------ the estimate
@dataclass
class RoleMemory:
    """One role's estimate, in bytes. ``device`` is the per-device total, ``host`` the host memory per process."""

    role: str
    kind: str  # "trainable" | "frozen" | "rollout"
    model: str
    params: int
    replicas: int
    shards: int  # N: the model is split over this many ranks (1: not sharded)
    sharded: bool
    num_gpus: float
    weights: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    anchors: float = 0.0
    gathered: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    kv_cache: float = 0.0
    host: float = 0.0  # host memory per process (offloaded state, EWC snapshot / offloaded anchors)
    micro_rows: int = 0
    seq: int = 0
    phase: str = ""  # which phase kind sized the activations
    stage: str = "main"  # "reward_model": the stage before the main phases
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> float:
        return (self.weights + self.grads + self.optimizer + self.anchors + self.gathered + self.activations
                + self.logits + self.kv_cache)


@dataclass
class BundlePlan:
    index: int
    roles: list[str]
    cpus: float
    gpus: float
    device: float  # bytes on one device (the roles' sum when they share it)
    budget: float  # bytes available to the bundle on its device
    fits: bool


@dataclass
class Plan:
    gpu: bool  # false: every role is CPU-only (numbers are host memory per process)
    gpu_memory_gib: float
    roles: list[RoleMemory]
    bundles: list[BundlePlan]
    total_cpus: float
    total_gpus: float
    warnings: list[str]
    notes: list[str]

    def to_json(self) -> dict:
        out = asdict(self)
        for r, obj in zip(out["roles"], self.roles):
            r["device"] = obj.device
        return out


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _layer_elems(s: ModelShape) -> int:
    """Elements saved for backward per token and decoder layer (see the module docstring)."""
    return 6 * s.hidden + 2 * s.kv_heads * s.head_dim + 4 * s.intermediate


def _batches(cfg: Config, role: str) -> list[tuple[str, int, int, int, "object"]]:
    """(phase kind, rows, seq, grad_accum, optim) of every batch ``role`` trains on."""
    from hbat.orchestrator.schedules import build_plan

    d, p = cfg.data, cfg.ppo
    ppo_seq = d.max_prompt_len + p.max_new_tokens
    if role == "reward_model":
        rm = cfg.reward_model
        return [("reward_model", 2 * rm.batch_size, d.max_len, rm.optim.grad_accum, rm.optim)]
    if role == "critic":
        return [("ppo", p.mini_batch_size, ppo_seq, p.critic_optim.grad_accum, p.critic_optim)]
    kinds = {ph.kind for ph in build_plan(cfg)} | ({"sft"} if cfg.schedule.name in ("ptx", "joint") else set())
    out = []
    if "sft" in kinds:
        out.append(("sft", cfg.sft.batch_size, d.max_len, cfg.sft.optim.grad_accum, cfg.sft.optim))
    if kinds - {"sft"}:
        if cfg.schedule.preference == "ppo":
            out.append(("ppo", p.mini_batch_size, ppo_seq, p.optim.grad_accum, p.optim))
        else:
            pl = cfg.preference_loss
            out.append(("preference", 2 * pl.batch_size, d.max_len, pl.optim.grad_accum, pl.optim))
    return out


def _logit_cols(cfg: Config, kind: str, seq: int) -> int:
    """Positions projected through the vocabulary per row (see the module docstring)."""
    return min(seq, cfg.ppo.max_new_tokens + 1) if kind == "ppo" else seq


def _micro_rows(rows: int, shards: int, grad_accum: int, seq: int, budget: int | None) -> int:
    r = _ceil(_ceil(rows, shards), grad_accum)
    if budget is not None:
        r = min(r, max(1, budget // seq))
    return max(1, r)


def trainable_memory(cfg: Config, role: str, shape: ModelShape, model: str, shards: int, sharded: bool,
                     spec) -> RoleMemory:
    """Per-device memory of a trainable role (see the module docstring for every term)."""
    prec = cfg.model.precision
    wb = 2 if prec == "bf16-pure" else 4  # bytes of a weight / gradient
    c = 4 if prec == "fp32" else 2  # compute bytes
    head = "lm" if role == "policy" else "scalar"
    params = param_count(shape, head)
    name = "reward (training)" if role == "reward_model" else role
    m = RoleMemory(name, "trainable", model, params, spec.replicas, shards, sharded, spec.num_gpus,
                   stage="reward_model" if role == "reward_model" else "main")
    lora = cfg.model.lora if role == "policy" else None
    trained = lora_params(shape, lora.r, lora.target_modules) if lora else params
    n = shards
    m.weights = (wb * params + (wb * trained if lora else 0)) / n
    m.grads = wb * trained / n
    m.optimizer = 2 * wb * trained / n
    if sharded:
        m.gathered = c * params if not cfg.resources.fsdp.reshard_after_forward else \
            c * (shape.root_params + 2 * shape.layer_params)
    elif prec == "bf16-mixed":
        m.gathered = 2 * params
        m.notes.append("gathered = autocast's bf16 weight cache")
    if role == "policy" and cfg.ewc.method != "none":
        anchors = 2 * 4 * trained / n
        snapshot = 4 * trained / n
        m.host += snapshot
        if cfg.ewc.offload_anchors:
            m.host += anchors
            m.notes.append(f"EWC anchors ({anchors / GiB:.1f} GiB) and phase-start snapshot in host memory")
        else:
            m.anchors = anchors
            m.notes.append("EWC phase-start snapshot in host memory")
    if sharded and cfg.resources.fsdp.cpu_offload:
        m.host += m.weights + m.grads + m.optimizer
        m.weights = m.grads = m.optimizer = 0.0
        m.notes.append("weights, gradients, AdamW state offloaded to host (fsdp.cpu_offload)")
    best = None
    for kind, rows, seq, ga, optim in _batches(cfg, role):
        r = _micro_rows(rows, n, ga, seq, optim.max_tokens_per_micro)
        tokens = r * seq
        e = _layer_elems(shape)
        if cfg.model.gradient_checkpointing:
            act = shape.layers * tokens * shape.hidden * c + tokens * e * c
        else:
            act = shape.layers * tokens * e * c
        logits = r * _logit_cols(cfg, kind, seq) * shape.vocab * (c + 4 + (4 if c != 4 else 0)) \
            if head == "lm" else 0
        if best is None or act + logits > best[0] + best[1]:
            best = (act, logits, r, seq, kind)
    if best is not None:
        m.activations, m.logits, m.micro_rows, m.seq, m.phase = best
    return m


def frozen_memory(cfg: Config, role: str, shape: ModelShape, model: str, spec, gpu_memory: float) -> RoleMemory:
    """Per-device memory of a frozen role (reference, reward scoring) or of the rollout role."""
    fb = 4 if cfg.model.precision == "fp32" else 2
    c = fb
    head = "scalar" if role == "reward" else "lm"
    params = param_count(shape, head)
    kind = "rollout" if role == "rollout" else "frozen"
    m = RoleMemory(role, kind, model, params, spec.replicas, 1, False, spec.num_gpus)
    m.weights = fb * params
    d, p = cfg.data, cfg.ppo
    rollout_rows = p.prompts_per_step * p.samples_per_prompt
    ppo_seq = d.max_prompt_len + p.max_new_tokens
    if role == "rollout":
        rows = _ceil(rollout_rows, spec.replicas)
        backend = cfg.rollout.backend
        if spec.num_gpus > 0 and backend in ("auto", "vllm"):
            util = float(cfg.rollout.vllm.get("gpu_memory_utilization", 0.9))
            m.kv_cache = max(0.0, util * gpu_memory - m.weights)
            m.notes.append(f"vLLM takes gpu_memory_utilization={util:g} of the device: weights + "
                           f"{m.kv_cache / GiB:.1f} GiB KV cache")
        else:
            m.kv_cache = rows * ppo_seq * shape.layers * 2 * shape.kv_heads * shape.head_dim * c
            m.notes.append("transformers generate: KV cache of the rollout slice")
        m.micro_rows, m.seq, m.phase = rows, ppo_seq, "ppo"
        return m
    batches = [("ppo", rollout_rows, ppo_seq)]
    if role == "reference" and cfg.schedule.preference != "ppo":
        batches = [("preference", 2 * cfg.preference_loss.batch_size, d.max_len)]
    best = None
    for kind_, rows, seq in batches:
        r = _ceil(rows, spec.replicas)
        tokens = r * seq
        act = tokens * _layer_elems(shape) * c + tokens * shape.hidden * c
        logits = r * _logit_cols(cfg, kind_, seq) * shape.vocab * (c + 4 + (4 if c != 4 else 0)) \
            if head == "lm" else 0
        if best is None or act + logits > best[0] + best[1]:
            best = (act, logits, r, seq, kind_)
    m.activations, m.logits, m.micro_rows, m.seq, m.phase = best
    return m


def _trains_reward_model(cfg: Config, roles: list[str]) -> bool:
    return "reward" in roles and cfg.reward_uses_model and cfg.model.reward is None


def estimate(cfg: Config, gpu_memory_gb: float | None = None) -> Plan:
    """The plan of ``cfg``: memory per role and per bundle, warnings for what does not fit."""
    from hbat.orchestrator.driver import run_roles
    from hbat.orchestrator.placement import plan_bundles

    g_gib = gpu_memory_gb or cfg.resources.gpu_memory_gb or 80.0
    g = g_gib * GiB
    roles = run_roles(cfg)
    res = cfg.resources
    m = cfg.model
    shapes: dict[str, tuple[ModelShape, str]] = {}
    shapes["policy"] = (model_shape(m.policy, "model.policy"), m.policy)
    ref = m.reference or m.policy
    shapes["reference"] = (model_shape(ref, "model.reference" if m.reference else "model.policy"), ref)
    reward_ref, reward_key = (m.reward, "model.reward") if m.reward else (m.policy, "model.policy")
    critic_ref, critic_key = ((m.critic, "model.critic") if m.critic else (reward_ref, reward_key))
    out: list[RoleMemory] = []
    notes: list[str] = []
    trains_rm = _trains_reward_model(cfg, roles)
    for role in roles:
        spec = getattr(res, role)
        if role in ("policy", "critic"):
            if role == "critic":
                shapes["critic"] = (model_shape(critic_ref, critic_key), critic_ref)
            shape, name = shapes[role]
            sharded = cfg.sharded(role)
            out.append(trainable_memory(cfg, role, shape, name, spec.replicas if sharded else 1, sharded, spec))
        elif role == "reward":
            if not cfg.reward_uses_model:
                notes.append("reward: rule rewards only (no model)")
                continue
            shape = model_shape(reward_ref, reward_key)
            label = reward_ref if m.reward else f"{m.policy} (trained)"
            out.append(frozen_memory(cfg, "reward", shape, label, spec, g))
            if trains_rm:  # the stage trains data-parallel over the reward replicas when sharded
                sharded = cfg.sharded("reward")
                out.append(trainable_memory(cfg, "reward_model", shape, label, spec.replicas if sharded else 1,
                                            sharded, spec))
        else:
            shape, name = shapes.get(role) or shapes["policy"]
            out.append(frozen_memory(cfg, role, shape, name, spec, g))
    gpu = any(getattr(res, r).num_gpus > 0 for r in roles)
    bundles, where = plan_bundles(res, roles)
    plans: list[BundlePlan] = []
    warnings: list[str] = []
    by_role: dict[str, list[RoleMemory]] = {}
    for r in out:
        by_role.setdefault("reward" if r.role == "reward (training)" else r.role, []).append(r)
    for i, b in enumerate(bundles):
        names = [r for r in roles if i in where.get(r, [])]
        gpus = b.get("GPU", 0.0)
        size = (lambda x: x.device) if gpus > 0 else (lambda x: x.device + x.host)
        main = sum(size(x) for r in names for x in by_role.get(r, []) if x.stage == "main")
        early = sum(size(x) for r in names for x in by_role.get(r, [])
                    if (x.stage == "reward_model") or (r in ("policy", "reference", "rollout")))
        device = max(main, early)
        budget = min(1.0, gpus) * g if gpus > 0 else math.inf
        fits = device <= budget
        plans.append(BundlePlan(i, names, b.get("CPU", 0.0), gpus, device, budget, fits))
    if gpu:
        for r in out:
            if r.num_gpus <= 0:
                notes.append(f"{r.role}: num_gpus 0 -- runs on the host ({(r.device + r.host) / GiB:.1f} GiB "
                             "host memory per process)")
                continue
            r_budget = min(1.0, r.num_gpus) * g
            mine = [p for p in plans if any(x is r for n in p.roles for x in by_role.get(n, []))]
            if r.device > r_budget and all(len(p.roles) == 1 for p in mine):
                warnings.append(f"WARN {r.role}: {r.device / GiB:.1f} GiB per device > {r_budget / GiB:.1f} GiB "
                                f"(num_gpus {r.num_gpus:g} of a {g_gib:g} GiB device)")
        for p in plans:
            if p.gpus > 0 and not p.fits and len(p.roles) > 1:
                warnings.append(f"WARN {' + '.join(p.roles)} (colocated, bundle {p.index}): {p.device / GiB:.1f} GiB "
                                f"on one device > {p.budget / GiB:.1f} GiB")
    if trains_rm:
        notes.append("reward (training): the reward-model stage, before the main phases, trains over the reward "
                     "role's replicas (an FSDP2 worker group when resources.reward.replicas > 1, "
                     "orchestrator/reward_stage.py); its bundle's peak is the larger of that stage and the main "
                     "phases")
    notes.append("logits: scored positions only (PPO: max_new_tokens + 1 columns; SFT/preference: bounded by "
                 "data.max_len)")
    notes.append(f"activations: SDPA attention (no seq x seq scores); gradient_checkpointing="
                 f"{str(cfg.model.gradient_checkpointing).lower()}; precision {cfg.model.precision}")
    return Plan(gpu, g_gib, out, plans, sum(b.get("CPU", 0.0) for b in bundles),
                sum(b.get("GPU", 0.0) for b in bundles), warnings, notes)


# ------------------------------------------------------------------ printing
def _gib(x: float) -> str:
    return "-" if not x else f"{x / GiB:.1f}" if x >= 0.05 * GiB else f"{x / GiB:.2f}"


def format_plan(plan: Plan, source: str = "") -> str:
    """The table ``hbat plan`` prints."""
    lines = []
    if source:
        lines.append(f"hbat plan: {source}")
    if plan.gpu:
        lines.append(f"memory per device, GiB (estimate; device memory {plan.gpu_memory_gib:g} GiB)")
    else:
        lines.append("CPU-only config (every num_gpus is 0): host memory per process, GiB (estimate)")
    head = ["role", "model", "params", "replicas", "sharded", "weights", "grads", "optim", "anchors", "gathered",
            "activ.", "logits", "kv", "total", "fits"]
    rows = []
    for r in plan.roles:
        if plan.gpu and r.num_gpus > 0:
            fits = "yes" if r.device <= min(1.0, r.num_gpus) * plan.gpu_memory_gib * GiB else "NO"
        else:
            fits = "host"
        rows.append([r.role, r.model, f"{r.params / 1e9:.2f}B" if r.params >= 1e8 else f"{r.params / 1e6:.0f}M",
                     str(r.replicas), f"yes/{r.shards}" if r.sharded else "no", _gib(r.weights), _gib(r.grads),
                     _gib(r.optimizer), _gib(r.anchors), _gib(r.gathered), _gib(r.activations), _gib(r.logits),
                     _gib(r.kv_cache), f"{(r.device if plan.gpu and r.num_gpus > 0 else r.device + r.host) / GiB:.1f}",
                     fits])
    widths = [max(len(str(x[i])) for x in [head] + rows) for i in range(len(head))]
    fmt = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    lines += [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    lines.append("")
    for r in plan.roles:
        extra = [f"micro-batch {r.micro_rows} rows x {r.seq} tokens ({r.phase})"] if r.micro_rows else []
        if r.host:
            extra.append(f"host {r.host / GiB:.1f} GiB per process")
        lines.append(f"  {r.role}: " + "; ".join(extra + r.notes))
    lines.append("")
    lines.append(f"placement group: {len(plan.bundles)} bundles, {plan.total_cpus:g} CPUs, {plan.total_gpus:g} GPUs")
    for b in plan.bundles:
        where = f"{b.gpus:g} GPU" if b.gpus else "CPU only"
        ok = "" if not b.gpus else ("  fits" if b.fits else f"  DOES NOT FIT ({b.budget / GiB:.1f} GiB)")
        lines.append(f"  bundle {b.index}: {' + '.join(b.roles):<28} {b.cpus:g} CPU, {where}: "
                     f"{b.device / GiB:.1f} GiB{ok}")
    lines.append("")
    lines += [f"note: {n}" for n in plan.notes]
    lines += plan.warnings
    return "\n".join(lines)


# ------------------------------------------------------------------ config loading
def load_plan_config(path: str, overrides: list[str] | None = None, method: str | None = None) -> tuple[Config, str]:
    """A train config, or a compare config's training tree (as ``hbat compare``
    builds it for one method). For a compare config without ``method`` the
    method with the most roles is planned (the first of equals). Returns
    (config, what was planned)."""
    import json as _json

    from hbat.orchestrator.config import load_config, read_yaml_mapping, validate_config

    tree = read_yaml_mapping(path)
    if not ({"train", "train_config", "methods"} & set(tree)):
        if method:
            raise ConfigError(f"--method {method}: {path} is a training config, not a compare config")
        return load_config(path, overrides), str(path)
    from hbat.orchestrator.driver import run_roles
    from hbat.orchestrator.evaluation.compare import load_compare_config

    ccfg, train_tree = load_compare_config(path, overrides)
    base = _json.loads(_json.dumps(train_tree))
    base.setdefault("model", {})["reward"] = ccfg.reward_model
    if ccfg.reward_model is None:
        data = base.setdefault("data", {})
        data.setdefault("prompts", data.get("preference"))
    specs = ccfg.specs()
    if method is not None:
        specs = [s for s in specs if s.name == method]
        if not specs:
            raise ConfigError(f"--method {method}: not one of {[s.name for s in ccfg.specs()]}")
    best: tuple[int, Config, str] | None = None
    for spec in specs:
        t = _json.loads(_json.dumps(base))
        for key, value in spec.overrides.items():
            from hbat.orchestrator.config import _set_dotted

            _set_dotted(t, key, value)
        t.setdefault("schedule", {}).update(name=spec.schedule, preference=spec.preference)
        cfg = validate_config(t, f"{path} (method {spec.name})")
        n = len(run_roles(cfg))
        if best is None or n > best[0]:
            best = (n, cfg, spec.name)
    assert best is not None
    return best[1], f"{path}, method {best[2]} (train: section)"
