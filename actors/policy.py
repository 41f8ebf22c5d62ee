"""The trainable policy.

It owns the weights, the optimizer and the EWC anchors, and exposes one step
method per objective family plus a combined step for mixed objectives (ptx,
joint). It does not know the schedule: the driver tells it when a phase begins
and ends and which anchor to apply; the policy remembers, per phase kind, how
its own weights moved (the modified-EWC importance) so the anchor tensors never
leave the actor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from hbat.actors.experience import Experience
from hbat.actors.training import (
    OptimSettings,
    build_optimizer,
    clip_and_step,
    quiet_transformers,
    rng_state,
    seed_everything,
    set_rng_state,
    split_micro,
    to_device,
)
from hbat.models import LoraSettings, load_causal_lm, load_tokenizer, resolve_device, save_checkpoint
from hbat.objectives import (
    EWCAnchor,
    entropy_from_logits,
    fisher_importance,
    get_preference_loss,
    masked_mean,
    ppo_policy_loss,
    sequence_logprobs,
    sft_loss,
    token_logprobs,
    trainable_state,
)


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


@dataclass
class EWCSettings:
    method: str = "modified"  # modified | fisher | none
    strength: float = 1.0
    normalize: str = "max"
    max_weight: float = 1.0


class PolicyWorker:
    def __init__(
        self,
        model: str,
        *,
        dtype: str = "float32",
        device: str = "auto",
        lora: dict | None = None,
        gradient_checkpointing: bool = False,
        seed: int = 0,
        torch_threads: int | None = None,
    ):
        quiet_transformers()
        if torch_threads:
            torch.set_num_threads(torch_threads)
        seed_everything(seed)
        self.device = resolve_device(device)
        self.model = load_causal_lm(
            model, dtype=dtype, device=self.device, trainable=True,
            lora=LoraSettings(**lora) if lora else None, gradient_checkpointing=gradient_checkpointing,
        )
        self.tokenizer = load_tokenizer(model)
        self.opt = self.sched = None
        self.optim = OptimSettings()
        self.phase: str | None = None
        self._phase_start: dict[str, torch.Tensor] | None = None
        self.anchors: dict[str, EWCAnchor] = {}  # phase kind -> anchor from its last phase
        self.active_kind: str | None = None  # which recorded anchor this phase applies
        self.total_steps = 1
        self.version = 0  # bumps on every optimizer step: rollout weight version
        self.steps_in_phase = 0

    # -- phases ---------------------------------------------------------------
    def begin_phase(self, kind: str, optim: dict, total_steps: int, anchor: str | None = None) -> None:
        """Fresh optimizer for this phase; apply the anchor of phase kind ``anchor``."""
        self.optim = OptimSettings.from_dict(optim)
        if anchor and anchor not in self.anchors:
            raise ValueError(f"no EWC anchor recorded for phase kind '{anchor}' yet")
        self.total_steps = total_steps
        self.opt, self.sched = build_optimizer(self.model, self.optim, total_steps)
        self.phase = kind
        self.steps_in_phase = 0
        self._phase_start = trainable_state(self.model)
        self.active_kind = anchor

    def end_phase(self, ewc: dict | None = None, fisher_batches: list | None = None) -> dict:
        """Record this phase's anchor (theta* = now, weights from movement or Fisher)."""
        s = EWCSettings(**(ewc or {}))
        out = {}
        if s.method != "none" and self.phase is not None:
            end = trainable_state(self.model)
            if s.method == "modified":
                anchor = EWCAnchor.from_movement(self._phase_start, end, s.strength, s.normalize, s.max_weight)
            else:
                if not fisher_batches:
                    raise ValueError("fisher EWC needs fisher_batches from this phase's data")
                imp = fisher_importance(self.model, fisher_batches, self._fisher_loss)
                self.model.zero_grad(set_to_none=True)
                anchor = EWCAnchor.from_fisher(end, imp, s.strength, s.normalize, s.max_weight)
            self.anchors[self.phase] = anchor
            weights = list(anchor.weights.values())
            out = {"ewc/anchored_tensors": len(weights), "ewc/mean_weight": sum(weights) / max(1, len(weights))}
        self.phase, self._phase_start, self.active_kind = None, None, None
        return out

    def _fisher_loss(self, model, batch) -> torch.Tensor:
        if isinstance(batch, Experience):
            return -self._logps(batch.to(self.device).sequences, batch.to(self.device).attention_mask).mean()
        b = to_device(batch, self.device)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return sft_loss(logits, b["input_ids"], b["loss_mask"])

    # -- forward helpers ------------------------------------------------------
    def _logits(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def _logps(self, input_ids, attention_mask):
        return token_logprobs(self._logits(input_ids, attention_mask), input_ids)

    @torch.no_grad()
    def logprobs(self, exp: Experience) -> torch.Tensor:
        """Old-policy per-token log-probs for an experience batch ([N, T-1], CPU)."""
        self.model.eval()
        e = exp.to(self.device)
        out = self._logps(e.sequences, e.attention_mask).float().cpu()
        self.model.train()
        return out

    @torch.no_grad()
    def sequence_logps(self, batch: dict) -> torch.Tensor:
        self.model.eval()
        b = to_device(batch, self.device)
        out = sequence_logprobs(self._logits(b["input_ids"], b["attention_mask"]), b["input_ids"], b["loss_mask"])
        self.model.train()
        return out.float().cpu()

    # -- losses ---------------------------------------------------------------
    def _loss(self, part: LossPart) -> tuple[torch.Tensor, dict]:
        if part.kind == "sft":
            b = to_device(part.batch, self.device)
            loss = sft_loss(self._logits(b["input_ids"], b["attention_mask"]), b["input_ids"], b["loss_mask"])
            return loss, {"sft/loss": loss.item()}
        if part.kind in ("pairwise", "pointwise"):
            return self._preference_loss(part)
        if part.kind == "ppo":
            return self._ppo_loss(part)
        raise ValueError(f"unknown loss part kind '{part.kind}'")

    def _preference_loss(self, part: LossPart):
        opts = dict(part.options)
        spec = get_preference_loss(opts.pop("loss", "dpo"))
        b = to_device(part.batch, self.device)
        logits = self._logits(b["input_ids"], b["attention_mask"])
        logps = sequence_logprobs(logits, b["input_ids"], b["loss_mask"])
        ref = b["ref_logps"].to(logps.dtype)
        if spec.kind == "pairwise":
            n = logps.shape[0] // 2  # collate_pairwise: chosen rows then rejected rows
            if opts.pop("needs_chosen_nll", False) or spec.fn.__name__ == "slic_loss":
                ntok = b["loss_mask"][:n, 1:].sum(1).clamp(min=1)
                opts.setdefault("chosen_nll", -logps[:n] / ntok)
            loss, stats = spec(logps[:n], logps[n:], ref[:n], ref[n:], **opts)
        else:
            if spec.fn.__name__ == "ulma_loss":
                opts.setdefault("num_tokens", b["loss_mask"][:, 1:].sum(1).clamp(min=1).to(logps.dtype))
            loss, stats = spec(logps, ref, b["labels"], **opts)
        return loss, {"pref/loss": loss.item(), **{f"pref/{k}": float(v) for k, v in stats.items()}}

    def _ppo_loss(self, part: LossPart):
        e: Experience = part.batch.to(self.device)
        logits = self._logits(e.sequences, e.attention_mask)
        logp = token_logprobs(logits, e.sequences)
        loss, stats = ppo_policy_loss(logp, e.logprobs, e.advantages, e.action_mask, part.options.get("clip_eps", 0.2))
        with torch.no_grad():
            ent = masked_mean(entropy_from_logits(logits[:, :-1]), e.action_mask)
        return loss, {"ppo/policy_loss": loss.item(), "ppo/entropy": float(ent),
                      **{f"ppo/{k}": float(v) for k, v in stats.items()}}

    # -- the step -------------------------------------------------------------
    def train_step(self, parts: list[LossPart]) -> dict:
        """One optimizer step on ``sum_i w_i * L_i + EWC penalty``.

        Each part is split into ``grad_accum`` micro-batches; gradients
        accumulate and the optimizer steps once.
        """
        if self.opt is None:
            raise RuntimeError("begin_phase() must be called before train_step()")
        self.model.train()
        k = self.optim.grad_accum
        metrics: dict[str, float] = {}
        for part in parts:
            micro = part.batch.minibatches(max(1, -(-len(part.batch) // k))) if isinstance(part.batch, Experience) \
                else split_micro(part.batch, k, paired=part.kind == "pairwise")
            for mb in micro:
                loss, stats = self._loss(LossPart(part.kind, mb, part.weight, part.options))
                (part.weight * loss / len(micro)).backward()
                for key, v in stats.items():
                    metrics[key] = metrics.get(key, 0.0) + v / len(micro)
        if self.active_kind is not None:
            pen = self.anchors[self.active_kind].penalty(self.model)
            if pen.requires_grad:
                pen.backward()
            metrics["ewc/penalty"] = float(pen.detach())
        metrics["optim/grad_norm"] = clip_and_step(self.model, self.opt, self.sched, self.optim.grad_clip)
        metrics["optim/lr"] = self.sched.get_last_lr()[0]
        self.version += 1
        self.steps_in_phase += 1
        return metrics

    @torch.no_grad()
    def eval_sft_loss(self, batch: dict) -> float:
        """Held-out instruction loss (no update): how well demonstrations are kept."""
        self.model.eval()
        b = to_device(batch, self.device)
        loss = sft_loss(self._logits(b["input_ids"], b["attention_mask"]), b["input_ids"], b["loss_mask"])
        self.model.train()
        return float(loss)

    def ewc_penalty(self, kind: str) -> float:
        """Penalty of the current weights against the recorded anchor of ``kind``."""
        with torch.no_grad():
            return float(self.anchors[kind].penalty(self.model))

    # -- weights --------------------------------------------------------------
    @torch.no_grad()
    def weights_version(self) -> int:
        return self.version

    def export_weights(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, plain HF state dict on CPU) for rollout sync; LoRA is merged."""
        model = self.model
        if hasattr(model, "peft_config"):
            model.merge_adapter()
            state = {
                k.replace("base_model.model.", "").replace(".base_layer", ""): v.detach().cpu().clone()
                for k, v in model.state_dict().items() if "lora_" not in k
            }
            model.unmerge_adapter()
        else:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return self.version, state

    def save_pretrained(self, path: str) -> str:
        save_checkpoint(self.model, self.tokenizer, path, extra={"weight_version": self.version})
        return path

    # -- training state -------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "opt": self.opt.state_dict() if self.opt else None,
            "sched": self.sched.state_dict() if self.sched else None,
            "optim": self.optim.__dict__,
            "phase": self.phase,
            "phase_start": self._phase_start,
            "anchors": {k: a.state_dict() for k, a in self.anchors.items()},
            "active_kind": self.active_kind,
            "total_steps": self.total_steps,
            "version": self.version,
            "steps_in_phase": self.steps_in_phase,
            "rng": rng_state(),
        }

    def save_state(self, path: str) -> str:
        """Full training state (weights, optimizer, anchors, RNG) in one file, atomically."""
        tmp = f"{path}.tmp-{os.getpid()}"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        torch.save(self.state(), tmp)
        os.replace(tmp, path)
        return path

    def load_state(self, path: str) -> int:
        st = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(st["model"])
        self.anchors = {k: EWCAnchor.from_state_dict(v) for k, v in st["anchors"].items()}
        self.optim = OptimSettings.from_dict(st["optim"])
        self.phase = st["phase"]
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
