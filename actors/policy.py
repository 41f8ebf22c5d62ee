"""The trainable policy.

It owns the weights (fp32 master weights unless ``bf16-pure`` is chosen), the
optimizer and the EWC anchors. One ``train_step`` takes a list of loss parts
(SFT, a preference loss, PPO), so mixed objectives (ptx, joint) are one
optimizer step. It does not know the schedule: the driver tells it when a
phase begins and ends and which anchor to apply; the policy remembers, per
phase kind, how its own weights moved (the modified-EWC importance) so the
anchor tensors never leave the actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hbat.actors.distributed import full, local
from hbat.actors.experience import Experience
from hbat.actors.gathered_export import export_gathered
from hbat.actors.trainer import ShardedTrainer
from hbat.actors.weight_transport import WeightPack
from hbat.actors.training import (
    build_optimizer,
    optim_config,
    set_rng_state,
    setup_actor,
    split_micro,
    to_device,
)
from hbat.actors.rollout_hf import merged_state_dict
from hbat.models import load_causal_lm, load_tokenizer, response_token_logprobs, save_checkpoint
from hbat.models.precision import precision as get_precision
from hbat.orchestrator.config import EWCConfig, FSDPConfig, LoraConfig, OptimConfig
from hbat.objectives import (
    AUTHORS_CODE_SCALE,
    EWCAnchor,
    get_preference_loss,
    masked_mean,
    masked_sum,
    ppo_policy_loss,
)
from hbat.objectives.ewc import mean_of_sums


@dataclass
class LossPart:
    """One term of a training step: ``weight * loss(kind, batch)``.

    kind: ``sft`` (batch from ``collate_sft``), ``pairwise``/``pointwise``
    (preference batch plus reference log-probs in ``batch['ref_logps']``, loss
    chosen by ``options['loss']``) or ``ppo`` (an :class:`Experience`).
    """

    kind: str
    batch: object
    weight: float = 1.0
    options: dict = field(default_factory=dict)
    # set when the driver splits a batch over a worker group's ranks: the loss
    # units (tokens, pairs, rows) of the whole batch, so each rank's mean is
    # weighted by its share of the global batch; and how many micro-batches
    # every rank splits its slice into (the same number on every rank, since
    # each forward and backward is a collective)
    total_units: int | None = None
    micro_batches: int | None = None



def loss_units(kind: str, batch) -> int:
    """What a loss part's mean runs over, for exact gradient accumulation:
    loss tokens for token-level losses (SFT, PPO), pairs or rows for the
    sequence-level preference losses."""
    if kind == "ppo":
        return int(batch.action_mask.sum())
    if kind == "sft":
        return int(batch["loss_mask"][:, 1:].sum())
    if kind == "pairwise":
        return int(batch["input_ids"].shape[0] // 2)
    return int(batch["input_ids"].shape[0])


def _lora_layers(model):
    """(module name, peft LoRA layer) for every adapted module of a peft model."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer) and m.active_adapters]


class PolicyWorker(ShardedTrainer):
    """One rank of the policy's worker group (or the whole policy, with one replica).

    Sharded (``shard=True``), the model is loaded on the host and sharded over
    the group by :meth:`join_group`; each rank then trains on its slice of
    every batch, and EWC snapshots, anchors and penalties are local shards.
    """

    def __init__(
        self,
        model: str,
        *,
        precision: str = "fp32",
        device: str = "auto",
        lora: LoraConfig | dict | None = None,
        gradient_checkpointing: bool = False,
        disable_dropout: bool = True,
        seed: int = 0,
        torch_threads: int | None = None,
        shard: bool = False,
        fsdp: FSDPConfig | dict | None = None,
        offload_anchors: bool = False,
        packing: str = "auto",
    ):
        self.device = setup_actor(device, torch_threads, seed)
        self.packing = packing
        self.precision = get_precision(precision)
        self._init_sharding(shard, fsdp)
        self.offload_anchors = offload_anchors
        self.model = load_causal_lm(
            model, dtype=self.precision.train_dtype, device="cpu" if shard else self.device, trainable=True,
            lora=LoraConfig.model_validate(lora) if isinstance(lora, dict) else lora, gradient_checkpointing=gradient_checkpointing,
            no_dropout=disable_dropout,
        )
        self.tokenizer = load_tokenizer(model)
        self.opt = self.sched = None
        self.optim = optim_config(None)
        self.phase: str | None = None
        self.ewc = None  # the EWC config section of the running phase (None: record no anchor)
        self._phase_start: dict[str, torch.Tensor] | None = None
        self.anchors: dict[str, EWCAnchor] = {}  # phase kind -> anchor from its last phase
        self.active_kind: str | None = None  # which recorded anchor this phase applies
        self.total_steps = 1
        self.version = 0  # bumps on every optimizer step: rollout weight version
        self.steps_in_phase = 0

    # -- phases ---------------------------------------------------------------
    def begin_phase(self, kind: str, optim: OptimConfig | dict, total_steps: int, anchor: str | None = None,
                    ewc: EWCConfig | None = None) -> None:
        """Fresh optimizer for this phase (``total_steps`` optimizer steps); apply
        the anchor of phase kind ``anchor``; with ``ewc`` (the config's EWC
        section) this phase's anchor is recorded at :meth:`end_phase`."""
        self.optim = optim_config(optim)
        if anchor and anchor not in self.anchors:
            raise ValueError(f"no EWC anchor recorded for phase kind '{anchor}' yet")
        if anchor and getattr(self.anchors[anchor], "released", False):
            raise ValueError(f"the EWC anchor of phase kind '{anchor}' was released as unused by the plan")
        self.total_steps = total_steps
        self.opt, self.sched = build_optimizer(self.model, self.optim, total_steps)
        self.phase = kind
        self.ewc = ewc if ewc is not None and ewc.method != "none" else None
        self.steps_in_phase = 0
        self._phase_start = self._ewc_tensors(differentiable=False) if self.ewc is not None else None
        self.active_kind = anchor

    def end_phase(self, fisher_batches: list | None = None) -> dict:
        """Record this phase's anchor (theta* = now, weights from movement or Fisher).

        Sharded, every tensor here is this rank's shard; the per-tensor
        statistics the weights come from are summed over the group first, so
        the weights are those of the whole tensors, the same on every rank.
        The phase's optimizer state is dropped: the next phase starts its own,
        so a phase-boundary checkpoint does not carry it.
        """
        s, out = self.ewc, {}
        if s is not None and self.phase is not None:
            if s.method in ("modified", "modified_code"):
                end = self._ewc_tensors(differentiable=False)
                previous = self.anchors.get(self.phase) if s.accumulate else None
                anchor = EWCAnchor.from_movement(
                    self._phase_start, end, s.strength, s.resolved_normalize, s.resolved_max_weight,
                    previous=previous, scale=s.softmax_scale or AUTHORS_CODE_SCALE, all_sum=self._all_sum_fn())
            else:
                if not fisher_batches:
                    raise ValueError("fisher EWC needs fisher_batches from this phase's data")
                # the Fisher is taken w.r.t. the trainable parameters themselves
                # (LoRA: its factors), where the gradients live
                imp = self._fisher_importance(fisher_batches)
                anchor = EWCAnchor.from_fisher(self.local_snapshot(), imp, s.strength,
                                               s.resolved_normalize, s.resolved_max_weight)
            anchor.view = "params" if s.method == "fisher" else self._view()
            anchor.recorded_at = self.version  # its tensors are the weights until the next step
            self.anchors[self.phase] = anchor
            weights = list(anchor.weights.values())
            out = {"ewc/anchored_tensors": len(weights), "ewc/mean_weight": sum(weights) / max(1, len(weights)),
                   "ewc/max_weight": max(weights, default=0.0)}
        self.phase, self._phase_start, self.active_kind, self.ewc = None, None, None, None
        self.opt = self.sched = None
        return out

    def _all_sum_fn(self):
        return self.all_sum if self.distributed else None

    def _fisher_importance(self, parts: list[LossPart]) -> dict[str, float]:
        """Original EWC's diagonal Fisher: per tensor, the mean over the ``K``
        batches of ``mean_elements(grad^2)`` of each batch's loss.

        Each batch's gradient comes from the same backward as a training step
        (this rank's slice, weighted by its share of the batch, summed over the
        group), so a sharded group squares the gradient of the whole batch.
        """
        params = self.trainable()
        sums = {n: [0.0, local(p).numel()] for n, p in params.items()}
        self.model.zero_grad(set_to_none=True)
        for part in parts:
            self._backward(part, self._fisher_loss, {})
            for n, p in params.items():
                if p.grad is not None:
                    sums[n][0] += float(local(p.grad).detach().double().pow(2).sum())
            self.model.zero_grad(set_to_none=True)
        k = len(parts)
        return mean_of_sums({n: (v / k, c) for n, (v, c) in sums.items()}, self._all_sum_fn())

    def _view(self) -> str:
        """Which tensors EWC anchors: trainable ``params``, or LoRA's effective ``delta``."""
        lora = hasattr(self.model, "peft_config")
        return "delta" if lora and (self.ewc is None or self.ewc.lora_penalty == "delta") else "params"

    def _ewc_tensors(self, differentiable: bool, view: str | None = None) -> dict[str, torch.Tensor]:
        """The tensors EWC snapshots and penalises, by name.

        Full fine-tuning: every trainable parameter. LoRA with
        ``ewc.lora_penalty: delta``: per adapted module the effective weight
        change ``scale * B @ A`` (``<module>.lora_delta``), plus any other
        trainable tensor (``modules_to_save``). Anchoring A and B separately
        penalises a change of factorisation that leaves the weights unchanged
        and misses changes that cancel between them; the product does neither.
        ``differentiable=False`` gives detached CPU copies (snapshots).
        """
        view = view or self._view()
        if view == "params":
            if differentiable:
                return self.trainable()
            return self.local_snapshot()
        out: dict[str, torch.Tensor] = {}
        covered: set[int] = set()
        with torch.set_grad_enabled(differentiable):
            for name, layer in _lora_layers(self.model):
                delta = None
                for adapter in layer.active_adapters:
                    if adapter not in layer.lora_A:
                        continue
                    d = layer.get_delta_weight(adapter).float()
                    delta = d if delta is None else delta + d
                    covered.update(id(p) for p in (*layer.lora_A[adapter].parameters(), *layer.lora_B[adapter].parameters()))
                if delta is not None:
                    out[f"{name}.lora_delta"] = delta if differentiable else delta.detach().to("cpu", copy=True)
        for n, p in self.model.named_parameters():
            if p.requires_grad and id(p) not in covered:
                out[n] = p if differentiable else p.detach().to("cpu", copy=True)
        return out

    def _fisher_loss(self, part: LossPart) -> tuple[torch.Tensor, dict]:
        """The objective whose Fisher EWC keeps (see ``ewc.fisher_loss``).

        A PPO batch gives the masked NLL of the policy's own samples (response
        tokens only): its squared gradient estimates the model Fisher.
        """
        if part.kind == "ppo":
            e = part.batch.to(self.device)
            loss = -masked_mean(self._logps(e.sequences, e.attention_mask, e.action_mask, e.temperature)[0],
                                e.action_mask)
            return loss, {}
        return self._loss(part)

    # -- forward helpers ------------------------------------------------------
    def _logps(self, input_ids, attention_mask, loss_cols, temperature: float = 1.0, entropy: bool = False):
        """Token log-probs ``[B, T-1]`` of the sampling distribution (logits / temperature,
        as the rollout sampled), projecting only the scored positions through the
        vocabulary (:func:`~hbat.models.scoring.response_token_logprobs`), a
        prefix that rows share run once (not under FSDP, where each forward
        is a round of all-gathers), else rows packed without padding
        (``model.packing``). Returns ``(logps, entropy or None, first scored column)``."""
        return response_token_logprobs(self.model, input_ids, attention_mask, loss_cols, temperature,
                                       compute=self.precision.compute(self.device, input_ids.shape[1]),
                                       share_prefix=not self.sharded,
                                       packing=self.packing, entropy=entropy)

    def _sft_loss(self, b: dict) -> torch.Tensor:
        """Token-mean NLL of the response tokens (``objectives.sft_loss`` on response positions only)."""
        return -masked_mean(self._logps(b["input_ids"], b["attention_mask"], b["loss_mask"][:, 1:])[0],
                            b["loss_mask"][:, 1:])

    @torch.no_grad()
    def logprobs(self, exp: Experience) -> torch.Tensor:
        """Old-policy per-token log-probs for an experience batch ([N, T-1], CPU)."""
        self.model.eval()
        e = exp.to(self.device)
        out = self._logps(e.sequences, e.attention_mask, e.action_mask, e.temperature)[0].float().cpu()
        self.model.train()
        return out

    @torch.no_grad()
    def sequence_logps(self, batch: dict) -> torch.Tensor:
        self.model.eval()
        b = to_device(batch, self.device)
        m = b["loss_mask"][:, 1:]
        out = masked_sum(self._logps(b["input_ids"], b["attention_mask"], m)[0], m, dim=1)
        self.model.train()
        return out.float().cpu()

    # -- losses ---------------------------------------------------------------
    def _loss(self, part: LossPart) -> tuple[torch.Tensor, dict]:
        if part.kind == "sft":
            b = to_device(part.batch, self.device)
            loss = self._sft_loss(b)
            return loss, {"sft/loss": loss.item()}
        if part.kind in ("pairwise", "pointwise"):
            return self._preference_loss(part)
        if part.kind == "ppo":
            return self._ppo_loss(part)
        raise ValueError(f"unknown loss part kind '{part.kind}'")

    def _preference_loss(self, part: LossPart):
        """The registry loss on policy and reference log-probs.

        ``options``: ``loss`` (registry name), ``average_logps`` (per-token
        mean instead of the sum, applied to policy and reference alike) and
        the loss's own keywords. Extra inputs come from the loss's declared
        ``inputs`` (``chosen_nll``, ``num_tokens``), not from its name.
        """
        opts = dict(part.options)
        spec = get_preference_loss(opts.pop("loss", "dpo"))
        average = opts.pop("average_logps", spec.average_logps)
        b = to_device(part.batch, self.device)
        m = b["loss_mask"][:, 1:]
        logps = masked_sum(self._logps(b["input_ids"], b["attention_mask"], m)[0], m, dim=1)
        ref = b["ref_logps"].to(logps.dtype)
        ntok = b["loss_mask"][:, 1:].sum(1).clamp(min=1).to(logps.dtype)
        if average:
            logps, ref = logps / ntok, ref / ntok
        if spec.kind == "pairwise":
            n = logps.shape[0] // 2  # collate_pairwise: chosen rows then rejected rows
            if "chosen_nll" in spec.inputs:
                opts.setdefault("chosen_nll", -(logps[:n] if average else logps[:n] / ntok[:n]))
            loss, stats = spec(logps[:n], logps[n:], ref[:n], ref[n:], **opts)
        else:
            if "num_tokens" in spec.inputs:
                opts.setdefault("num_tokens", ntok)
            loss, stats = spec(logps, ref, b["labels"], **opts)
        return loss, {"pref/loss": loss.item(), **{f"pref/{k}": float(v) for k, v in stats.items()}}

    def _ppo_loss(self, part: LossPart):
        e: Experience = part.batch.to(self.device)
        logp, ent_tok, _ = self._logps(e.sequences, e.attention_mask, e.action_mask, e.temperature, entropy=True)
        # no stored old log-probs: the batch gets one update, so the policy that
        # sampled it is this one (ratio 1; see PPOStep.score)
        old = e.logprobs if e.logprobs is not None else logp.detach()
        loss, stats = ppo_policy_loss(logp, old, e.advantages, e.action_mask, part.options.get("clip_eps", 0.2))
        ent = masked_mean(ent_tok, e.action_mask)
        return loss, {"ppo/policy_loss": loss.item(), "ppo/entropy": float(ent),
                      **{f"ppo/{k}": float(v) for k, v in stats.items()}}

    # -- the step -------------------------------------------------------------
    def _backward(self, part: LossPart, loss_fn, metrics: dict[str, float]) -> None:
        """Accumulate ``part.weight * loss`` gradients over the part's micro-batches.

        Each micro-batch's mean loss is weighted by its share of the loss units
        (tokens for SFT and PPO, pairs/rows for preference losses) of the
        *whole* batch -- ``part.total_units`` when the batch was split over a
        group's ranks -- so the accumulated (and, sharded, group-summed)
        gradient is that of the whole batch's mean: neither ``grad_accum`` nor
        the number of ranks changes the loss.
        """
        k = part.micro_batches or self.optim.grad_accum
        micro = part.batch.minibatches(max(1, -(-len(part.batch) // k))) if isinstance(part.batch, Experience) \
            else split_micro(part.batch, k, paired=part.kind == "pairwise")
        units = [loss_units(part.kind, mb) for mb in micro]
        total = part.total_units or sum(units)
        for mb, u in zip(micro, units):
            share = u / total if total else 1.0 / len(micro)
            loss, stats = loss_fn(LossPart(part.kind, mb, part.weight, part.options))
            (part.weight * share * self.grad_scale * loss).backward()
            for key, v in stats.items():
                metrics[key] = metrics.get(key, 0.0) + v * share

    def train_step(self, parts: list[LossPart]) -> dict:
        """One optimizer step on ``sum_i w_i * L_i + EWC penalty``.

        Each part is split into micro-batches (``grad_accum``, or the driver's
        ``micro_batches``); gradients accumulate and the optimizer steps once.
        In a worker group every rank gets its slice of each part, the share-
        weighted statistics are summed over the ranks, and every rank returns
        the same metrics.
        """
        if self.opt is None:
            raise RuntimeError("begin_phase() must be called before train_step()")
        self.model.train()
        metrics: dict[str, float] = {}
        for part in parts:
            self._backward(part, self._loss, metrics)
        if self.active_kind is not None:
            metrics["ewc/penalty"] = self._apply_penalty(self.anchors[self.active_kind])
        metrics = self.sum_stats(metrics)
        metrics["optim/grad_norm"] = self.clip_and_step(self.opt, self.sched, self.optim.grad_clip)
        metrics["optim/lr"] = self.sched.get_last_lr()[0]
        self.version += 1
        self.steps_in_phase += 1
        return metrics

    def _apply_penalty(self, anchor: EWCAnchor) -> float:
        """Add the anchor's penalty gradient; its value on this rank's shards (summed by the caller).

        Anchoring the trainable tensors themselves, the gradient is added
        directly (:meth:`EWCAnchor.add_gradient`: no autograd graph, no stored
        differences); LoRA's ``delta`` view is a function of two factors and
        goes through autograd.
        """
        view = getattr(anchor, "view", "params")
        if view != "params":
            pen = anchor.penalty(self._ewc_tensors(differentiable=True, view=view))
            if pen.requires_grad:
                pen.backward()
            return float(pen.detach())
        pairs = {}
        for n, p in self.trainable().items():
            if n not in anchor.anchor:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            pairs[n] = (local(p).detach(), local(p.grad))
        return anchor.add_gradient(pairs, keep_on_device=not self.offload_anchors)

    @torch.no_grad()
    def eval_sft_loss(self, batch: dict) -> float:
        """Held-out instruction loss (no update): how well demonstrations are kept."""
        self.model.eval()
        b = to_device(batch, self.device)
        loss = self._sft_loss(b)
        self.model.train()
        return float(loss)

    def ewc_penalty(self, kind: str) -> float:
        """Penalty of the current weights against the recorded anchor of ``kind`` (summed over ranks)."""
        anchor = self.anchors[kind]
        with torch.no_grad():
            view = getattr(anchor, "view", "params")
            tensors = self._ewc_tensors(differentiable=False, view=view) if view != "params" else \
                {n: local(p).detach() for n, p in self.trainable().items()}
            return float(self.all_sum([float(anchor.penalty(tensors))])[0])

    def anchor_weights(self, kind: str) -> dict[str, float]:
        """Per-tensor EWC weights of the anchor recorded for ``kind`` (inspection, tests)."""
        return dict(self.anchors[kind].weights)

    def release_anchors(self, kinds: list[str]) -> None:
        """Drop the tensors of anchors no later phase applies (the driver reads
        that from the plan): a full copy of the weights each, in memory and in
        every checkpoint. Their per-tensor weights and raw importances stay
        (``ewc.accumulate`` builds on them)."""
        for k in kinds:
            a = self.anchors.get(k)
            if a is not None:
                a.anchor, a.released = {}, True

    # -- weights --------------------------------------------------------------
    @torch.no_grad()
    def weights_version(self) -> int:
        return self.version

    def export_weights(self) -> tuple[int, WeightPack]:
        """(version, plain HF state dict on the host) for rollout sync and reference refresh.

        The weights travel as a :class:`~hbat.actors.weight_transport.WeightPack`
        (numpy arrays: Ray's object store moves them zero-copy; read as tensors).
        LoRA adapters are folded into a *copy* of the base weights
        (:func:`merged_state_dict`): merging in place and unmerging again
        drifts the frozen base in bf16, since ``(W + d) - d != W`` there.
        Sharded: every rank joins the gathers, rank 0 returns the weights and
        the others an empty pack.
        """
        if hasattr(self.model, "peft_config"):
            return self.version, WeightPack(merged_state_dict(self.model))
        if self.sharded:
            out = {}
            for k, v in self.model.state_dict().items():
                t = full(v).detach()
                if self.rank == 0:
                    out[k] = t
            return self.version, WeightPack(out)
        return self.version, WeightPack(self.model.state_dict())

    def save_pretrained(self, path: str) -> str:
        """The policy as a Hugging Face folder (sharded: gathered tensor by tensor, rank 0 writes)."""
        if self.sharded:
            return export_gathered(self.model, self.tokenizer, path, self.rank, extra={"weight_version": self.version})
        save_checkpoint(self.model, self.tokenizer, path, extra={"weight_version": self.version})
        return path

    # -- training state -------------------------------------------------------
    def save_state(self, path: str) -> str:
        """The training state as a DCP folder every rank writes its shards into:
        weights, the running phase's optimizer state (none at a phase boundary),
        the EWC anchors and the phase-start snapshot as shards, the rest in
        ``meta.pt`` (see :mod:`hbat.actors.sharded_state`)."""
        tensors = {f"anchor.{k}": a.anchor for k, a in self.anchors.items()
                   if getattr(a, "view", "params") == "params" and not self._anchor_is_weights(a)
                   and not getattr(a, "released", False)}
        if self._phase_start is not None and self._view() == "params":
            tensors["phase_start"] = self._phase_start
        delta = {k: a.state_dict() for k, a in self.anchors.items() if getattr(a, "view", "params") != "params"}
        meta = {
            "anchors": {k: {"weights": a.weights, "strength": a.strength, "importance": a.importance,
                            "view": getattr(a, "view", "params"), "released": getattr(a, "released", False),
                            "same_as_weights": self._anchor_is_weights(a), "recorded_at": getattr(a, "recorded_at", None)}
                        for k, a in self.anchors.items()},
            "delta_anchors": delta,  # LoRA delta view (never sharded): small, kept whole
            "phase_start_delta": self._phase_start if self._phase_start is not None and self._view() != "params" else None,
            "optim": self.optim.model_dump(), "phase": self.phase, "ewc": self.ewc,
            "active_kind": self.active_kind, "total_steps": self.total_steps, "version": self.version,
            "steps_in_phase": self.steps_in_phase,
        }
        return self.save_training_state(path, self.opt, self.sched, tensors, meta)

    def _anchor_is_weights(self, a: EWCAnchor) -> bool:
        """An anchor recorded at the current weight version equals the weights:
        a checkpoint stores it once, as the weights (each tensor once)."""
        return getattr(a, "view", "params") == "params" and getattr(a, "recorded_at", None) == self.version \
            and not getattr(a, "released", False)

    def load_state(self, path: str) -> int:
        """Resume from :meth:`save_state`'s folder, whatever group size wrote it
        (or from the single ``policy.pt`` file of an older hbat)."""
        if str(path).endswith(".pt"):
            return self._load_legacy(path)
        from hbat.actors.sharded_state import read_meta

        m = read_meta(path)
        self.optim = optim_config(m["optim"])
        self.total_steps = m["total_steps"]
        _, self.opt, self.sched, tensors = self.load_training_state(path, self.optim, self.total_steps)
        self.anchors = {}
        for k, a in m["anchors"].items():
            if a["view"] == "params":
                if a.get("released"):
                    anchor = EWCAnchor({}, {}, a["strength"])
                    anchor.weights, anchor.released = dict(a["weights"]), True
                else:
                    stored = self.local_snapshot() if a.get("same_as_weights") else tensors[f"anchor.{k}"]
                    stored = {n: stored[n] for n in a["weights"]}
                    anchor = EWCAnchor(stored, a["weights"], a["strength"])
                anchor.importance = dict(a["importance"])
                anchor.recorded_at = a.get("recorded_at")
            else:
                anchor = EWCAnchor.from_state_dict(m["delta_anchors"][k])
            anchor.view = a["view"]
            self.anchors[k] = anchor
        self.phase, self.ewc, self.active_kind = m["phase"], m["ewc"], m["active_kind"]
        self._phase_start = tensors.get("phase_start", m.get("phase_start_delta"))
        self.version, self.steps_in_phase = m["version"], m["steps_in_phase"]
        return self.version

    def _load_legacy(self, path: str) -> int:
        st = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(st["model"])
        self.anchors = {}
        for k, v in st["anchors"].items():
            self.anchors[k] = EWCAnchor.from_state_dict(v)
            self.anchors[k].view = v.get("view", "params")
        self.optim = optim_config(st["optim"])
        self.phase = st["phase"]
        self.ewc = st.get("ewc")
        self._phase_start = st["phase_start"]
        self.active_kind = st["active_kind"]
        self.total_steps = st["total_steps"]
        if st["opt"] is not None:
            self.opt, self.sched = build_optimizer(self.model, self.optim, self.total_steps)
            self.opt.load_state_dict(st["opt"])
            self.sched.load_state_dict(st["sched"])
        self.version = st["version"]
        self.steps_in_phase = st["steps_in_phase"]
        set_rng_state(st["rng"])
        return self.version

    def ping(self) -> bool:
        return True
