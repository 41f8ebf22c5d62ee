"""The single controller: reads top to bottom like the training recipe.

validate config and data -> start Ray and place the roles -> (train a reward
model) -> execute the schedule's phases in order, checkpointing after each ->
export the final policy. The driver talks to actors only through their public
methods; data moves as tensors, dataclasses and Ray object refs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from tqdm.auto import tqdm

from hbat.actors.critic import CriticWorker
from hbat.actors.experience import Experience
from hbat.actors.policy import LossPart, PolicyWorker
from hbat.actors.reference import ReferenceWorker
from hbat.actors.reward import RewardWorker, load_rule
from hbat.actors.rollout import RolloutWorker
from hbat.actors.sampling import SamplingSettings
from hbat.models import load_tokenizer
from hbat.models.atomic import atomic_write_bytes
from hbat.models.precision import precision
from hbat.objectives import get_preference_loss
from hbat.orchestrator.advantages import compute_targets
from hbat.orchestrator.checkpoint import CheckpointManager, RunState
from hbat.orchestrator.config import Config, ConfigError, OptimConfig, dump_config
from hbat.orchestrator.data import (
    PairwiseDataset,
    PointwiseDataset,
    PromptDataset,
    SFTDataset,
    collate_pairwise,
    collate_pointwise,
    collate_sft,
    curriculum_batch,
    curriculum_order,
)
from hbat.orchestrator.metrics import MetricsLogger
from hbat.orchestrator.placement import Placement
from hbat.orchestrator.schedules import Phase, build_plan

log = logging.getLogger("hbat")


@dataclass(frozen=True)
class PhaseSetup:
    """What one phase trains on: its data, batch size, phase steps, optimizer
    section, and the SFT batch size of its mixed-in term (ptx / joint)."""

    data: object
    batch_size: int
    steps: int
    optim: OptimConfig
    sft_batch_size: int

_WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


class Driver:
    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg = cfg
        self.run_dir = cfg.run_dir()
        self.resume = resume
        self.ckpt = CheckpointManager(self.run_dir, create=False)
        self.state = RunState()
        self.plan: list[Phase] = build_plan(cfg)
        self._validate_names()

    # ------------------------------------------------------------------ setup
    def _validate_names(self) -> None:
        """Fail on bad names before any actor or data load."""
        try:
            self.pref_spec = get_preference_loss(self.cfg.dpo.loss)
        except ValueError as exc:
            raise ConfigError(f"dpo.loss: {exc}") from None
        self.pref_options = self._preference_options()
        if self.cfg.dpo.curriculum != "none" and self.pref_spec.kind != "pairwise":
            raise ConfigError(f"dpo.curriculum '{self.cfg.dpo.curriculum}' orders pairs; dpo.loss "
                              f"'{self.cfg.dpo.loss}' is {self.pref_spec.kind}")
        for path in self.cfg.reward_model.rule_rewards:
            try:
                load_rule(path)
            except ValueError as exc:
                raise ConfigError(f"reward_model.rule_rewards: {exc}") from None
        if self.resume and self.ckpt.latest() is None:
            if not (self.run_dir / "config.yaml").exists():
                raise ConfigError(f"--resume: no checkpoint in {self.ckpt.root}")
            # killed before the first phase finished (e.g. during reward-model
            # training): start the schedule over; a saved reward model is reused
            log.warning("--resume: %s has no checkpoint yet; starting the schedule from the beginning", self.run_dir)
            self.resume = False
        if self.cfg.resources.policy.replicas > 1 or self.cfg.resources.critic.replicas > 1:
            raise ConfigError(
                "resources.policy.replicas / resources.critic.replicas > 1: data-parallel policy and critic "
                "training is not available yet; scale rollout/reference/reward replicas instead"
            )

    def _preference_options(self) -> dict:
        """The preference loss's keyword options: registry defaults, then what the config sets.

        A key the loss does not take is a ConfigError naming it and the valid ones.
        """
        d, spec = self.cfg.dpo, self.pref_spec
        valid = spec.option_names()
        given = dict(d.options)
        for key in ("beta", "label_smoothing"):
            if getattr(d, key) is not None:
                given[key] = getattr(d, key)
        bad = sorted(set(given) - set(valid))
        if bad:
            where = ", ".join(f"dpo.{k}" if k in ("beta", "label_smoothing") else f"dpo.options.{k}" for k in bad)
            raise ConfigError(f"{where}: not an option of dpo.loss '{d.loss}' (valid: {', '.join(valid) or 'none'})")
        average = spec.average_logps if d.average_logps is None else d.average_logps
        return {"loss": d.loss, **spec.defaults, **given, "average_logps": average}

    def load_data(self) -> None:
        """Tokenise and validate every file up front (bad data fails before Ray starts)."""
        c, d = self.cfg, self.cfg.data
        self.tokenizer = load_tokenizer(c.model.policy)
        self.pad_id = self.tokenizer.pad_token_id
        opts = dict(max_prompt_len=d.max_prompt_len, max_len=d.max_len, chat_template=d.chat_template,
                    on_overlong=d.on_overlong, limit=d.limit)
        self.sft = SFTDataset.from_file(d.sft, self.tokenizer, **opts) if d.sft else None
        self.pairs = PairwiseDataset.from_file(d.preference, self.tokenizer, **opts) if d.preference else None
        self.dpo_pairs = curriculum_order(self.pairs, c.dpo.curriculum)  # easy to hard before sharding, or as is
        self.points = PointwiseDataset.from_file(d.pointwise, self.tokenizer, **opts) if d.pointwise else None
        self.prompts = PromptDataset.from_file(d.prompts, self.tokenizer, **opts) if d.prompts else None
        self.eval_sft = SFTDataset.from_file(d.eval_sft, self.tokenizer, **opts) if d.eval_sft else None
        self.eval_prompts = PromptDataset.from_file(d.eval_prompts, self.tokenizer, **opts) if d.eval_prompts else None
        if c.schedule.preference == "dpo" and c.schedule.name != "sft_only":
            need = self.points if self.pref_spec.kind == "pointwise" else self.pairs
            if need is None:
                key = "data.pointwise" if self.pref_spec.kind == "pointwise" else "data.preference"
                raise ConfigError(f"dpo.loss '{c.dpo.loss}' is {self.pref_spec.kind}: set {key}")
        for name, ds in (("sft", self.sft), ("preference", self.pairs), ("pointwise", self.points), ("prompts", self.prompts)):
            if ds is not None and len(ds) < c.schedule.rounds:
                raise ConfigError(f"data.{name}: {len(ds)} records cannot be split into schedule.rounds={c.schedule.rounds} shards")

    def start(self) -> None:
        c = self.cfg
        if not ray.is_initialized():
            ray.init(address=c.resources.address, num_cpus=c.resources.num_cpus, include_dashboard=False,
                     runtime_env={"env_vars": _WORKER_ENV}, log_to_driver=True)
        roles = ["policy", "reference"]
        ppo = c.schedule.preference == "ppo" and c.schedule.name != "sft_only"
        if ppo:
            roles += ["reward", "rollout"] + (["critic"] if c.ppo.advantage == "gae" else [])
        elif self.eval_prompts is not None:
            roles += ["rollout"] + (["reward"] if (c.model.reward or self.pairs is not None) else [])
        self.roles = roles
        self.placement = Placement(c.resources, roles)
        m, threads = c.model, c.resources.torch_threads
        lora = m.lora.model_dump() if m.lora else None
        frozen = precision(m.precision).frozen_dtype_name  # reference / reward scoring / rollout weights
        self.policy = self.placement.spawn("policy", PolicyWorker, m.policy, precision=m.precision, lora=lora,
                                           gradient_checkpointing=m.gradient_checkpointing,
                                           disable_dropout=m.disable_dropout, seed=c.run.seed, torch_threads=threads)
        self.reference = self.placement.spawn("reference", ReferenceWorker, m.reference or m.policy,
                                              dtype=frozen, torch_threads=threads)
        self.rollout = self.placement.spawn("rollout", RolloutWorker, m.policy, backend=c.rollout.backend,
                                            dtype=frozen, vllm_kwargs=c.rollout.vllm) if "rollout" in roles else None
        self.reward = self.critic = None
        ray.get(self.policy.call("ping") + self.reference.call("ping"))

    # -------------------------------------------------------------- stages
    def train_reward_model(self, bar: bool = True) -> str:
        """Bradley-Terry training on data.preference; saves a HF folder once."""
        c, rm = self.cfg, self.cfg.reward_model
        out = self.run_dir / "reward_model"
        if (out / "config.json").exists():
            return str(out)
        worker = self.placement.spawn("reward", RewardWorker, c.model.policy, trainable=True,
                                      precision=c.model.precision, seed=c.run.seed,
                                      torch_threads=c.resources.torch_threads)
        n_batches = -(-len(self.pairs) // rm.batch_size)
        total = min(rm.max_steps or n_batches * rm.epochs, n_batches * rm.epochs)
        ray.get(worker.call("begin_training", rm.optim.model_dump(), total))
        step = 0
        with tqdm(total=total, desc="reward model", disable=not c.logging.progress) as pbar:
            for epoch in range(rm.epochs):
                order = torch.randperm(len(self.pairs), generator=torch.Generator().manual_seed(c.run.seed + epoch))
                for i in range(0, len(order), rm.batch_size):
                    if step >= total:
                        break
                    batch = collate_pairwise([self.pairs[j] for j in order[i:i + rm.batch_size].tolist()], self.pad_id)
                    stats = ray.get(worker.first("train_step", batch))
                    self.metrics.log(step, stats, phase="reward_model")
                    pbar.update(1)
                    pbar.set_postfix(loss=f"{stats['rm/loss']:.3f}", acc=f"{stats['rm/accuracy']:.2f}")
                    step += 1
        ray.get(worker.call("end_training"))
        ray.get(worker.first("save_pretrained", str(out)))
        for a in worker.actors:
            ray.kill(a)
        return str(out)

    def start_scorers(self) -> None:
        """Reward and critic actors, after a reward model exists."""
        c = self.cfg
        if "reward" not in self.roles:
            return
        rm_path = c.model.reward or self.state.reward_model
        self.reward = self.placement.spawn(
            "reward", RewardWorker, rm_path, dtype=precision(c.model.precision).frozen_dtype_name,
            rules=c.reward_model.rule_rewards,
            rule_weight=c.reward_model.rule_weight, model_weight=c.reward_model.model_weight,
            torch_threads=c.resources.torch_threads)
        if "critic" in self.roles:
            self.critic = self.placement.spawn("critic", CriticWorker, c.model.critic or rm_path or c.model.policy,
                                               precision=c.model.precision, seed=c.run.seed,
                                               disable_dropout=c.model.disable_dropout,
                                               torch_threads=c.resources.torch_threads)

    # ---------------------------------------------------------------- run
    def run(self) -> dict:
        c = self.cfg
        self.load_data()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.run_dir / "config.yaml", dump_config(c).encode())
        self.metrics = MetricsLogger(self.run_dir, c.logging.tensorboard, c.logging.wandb, c.logging.wandb_project,
                                     c.model_dump(mode="json"), c.run.name)
        resumed = self.ckpt.latest() if self.resume else None
        if resumed:
            self.state = resumed[0]
        self.start()
        try:
            if "reward" in self.roles and c.model.reward is None and self.state.reward_model is None:
                self.state.reward_model = self.train_reward_model()
            self.start_scorers()
            if resumed:
                self._load_actor_states(resumed[1])
                if self.state.reference_version is not None:
                    ray.get(self.reference.call("load_weights_file", str(resumed[1] / "reference.safetensors")))
                log.info("resumed at phase %d step %d", self.state.phase_index, self.state.step_in_phase)
            if self.critic is not None:
                ray.get(self.critic.call("configure", c.ppo.critic_optim.model_dump(), self._critic_total_steps()))
                if resumed and (resumed[1] / "critic.pt").exists():
                    ray.get(self.critic.first("load_state", str(resumed[1] / "critic.pt")))
            self._sync_rollout()
            t0 = time.time()
            while self.state.phase_index < len(self.plan):
                self._run_phase(self.state.phase_index, self.plan[self.state.phase_index])
            final = self.run_dir / "final"
            ray.get(self.policy.first("save_pretrained", str(final)))
            self.state.finished = True
            summary = {"final_checkpoint": str(final), "global_steps": self.state.global_step,
                       "phases": len(self.plan), "wall_s": round(time.time() - t0, 1),
                       **{k: v for k, v in self.last_eval.items()}}
            atomic_write_bytes(self.run_dir / "summary.json", __import__("json").dumps(summary, indent=2).encode())
            self._plot()
            return summary
        finally:
            self.metrics.close()

    last_eval: dict = {}

    def _critic_total_steps(self) -> int:
        """Optimizer steps the critic takes over the run (its LR schedule's length)."""
        setups = [(p, self._phase_setup(p)) for p in self.plan if p.kind == "preference"]
        return max(1, sum(self._optimizer_steps(p, s) for p, s in setups))

    # -------------------------------------------------------------- phases
    def _shard(self, ds, phase: Phase):
        return ds.shard(phase.num_shards, phase.shard)

    def _own_setup(self, kind: str, phase: Phase) -> "PhaseSetup":
        """Data, batch size, step count and optimizer section of a plain phase of ``kind``."""
        c = self.cfg
        if kind == "sft":
            data, bs, fixed, optim = self._shard(self.sft, phase), c.sft.batch_size, c.sft.steps_per_phase, c.sft.optim
        elif c.schedule.preference == "ppo":
            data, bs, fixed, optim = self._shard(self.prompts, phase), c.ppo.prompts_per_step, c.ppo.steps_per_phase, c.ppo.optim
        else:
            ds = self.points if self.pref_spec.kind == "pointwise" else self.dpo_pairs
            data, bs, fixed, optim = self._shard(ds, phase), c.dpo.batch_size, c.dpo.steps_per_phase, c.dpo.optim
        steps = phase.steps if phase.steps is not None else (fixed or max(1, -(-len(data) // bs)))
        return PhaseSetup(data, bs, steps, optim, c.sft.batch_size)

    def _phase_setup(self, phase: Phase) -> "PhaseSetup":
        """What a phase trains on and how long; ``joint_budget`` phases get their
        round's SFT and preference budgets combined (see ``Phase``)."""
        own = self._own_setup(phase.kind, phase)
        if not phase.joint_budget:
            return own
        sft = self._own_setup("sft", phase)
        S, P = sft.steps, own.steps
        lr = (S * sft.optim.lr + P * own.optim.lr) / (S + P)
        return PhaseSetup(own.data, max(1, round(own.batch_size * P / (S + P))), S + P,
                          own.optim.model_copy(update={"lr": lr}), max(1, round(sft.batch_size * S / (S + P))))

    def _optimizer_steps(self, phase: Phase, setup: "PhaseSetup") -> int:
        """Optimizer steps of a phase: PPO makes epochs x mini-batches per step."""
        ppo = phase.kind == "preference" and self.cfg.schedule.preference == "ppo"
        return setup.steps * (self.cfg.ppo.optimizer_steps_per_step(setup.batch_size) if ppo else 1)

    def _batch_indices(self, n: int, bs: int, phase_index: int, step: int) -> list[int]:
        """Deterministic per (seed, phase, step) so a resumed run sees the same batches."""
        epoch, offset = divmod(step * bs, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.run.seed * 1000 + phase_index * 31 + epoch))
        idx = perm[offset:offset + bs].tolist()
        if len(idx) < bs and n >= bs:
            perm2 = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.run.seed * 1000 + phase_index * 31 + epoch + 1))
            idx += perm2[: bs - len(idx)].tolist()
        return idx

    def _step_indices(self, phase: Phase, n: int, bs: int, phase_index: int, step: int, steps: int) -> list[int]:
        """A step's examples: seeded random, or a curriculum window for DPO-family phases."""
        if phase.kind == "preference" and self.cfg.schedule.preference == "dpo" and self.cfg.dpo.curriculum != "none":
            return curriculum_batch(n, bs, step, steps)
        return self._batch_indices(n, bs, phase_index, step)

    def _refresh_reference(self) -> None:
        """The reference becomes the current policy (``reference.refresh``)."""
        version = ray.get(self.reference.call("load_exported", self.policy.first("export_weights")))[0]
        self.state.reference_version = version
        log.info("reference refreshed to the policy (weight version %d)", version)

    def _run_phase(self, index: int, phase: Phase) -> None:
        c = self.cfg
        setup = self._phase_setup(phase)
        total, data, bs = setup.steps, setup.data, setup.batch_size
        if self.state.step_in_phase == 0:
            if phase.refresh_reference:
                self._refresh_reference()
            ray.get(self.policy.call("begin_phase", phase.kind, setup.optim.model_dump(),
                                     self._optimizer_steps(phase, setup), phase.anchor,
                                     c.ewc if phase.record_anchor else None))
            self.metrics.phase_boundary(self.state.global_step, index, phase.name)
        sft_shard = self._shard(self.sft, phase) if phase.sft_mix else None

        def mix_for(opt_step: int) -> LossPart | None:
            """ptx / joint: a fresh SFT batch for every optimizer step of the phase."""
            if sft_shard is None:
                return None
            sidx = self._batch_indices(len(sft_shard), setup.sft_batch_size, index + 10_000, opt_step)
            return LossPart("sft", collate_sft([sft_shard[i] for i in sidx], self.pad_id), weight=phase.sft_mix)

        desc = f"phase {index + 1}/{len(self.plan)} {phase.name}"
        with tqdm(total=total, initial=self.state.step_in_phase, desc=desc, disable=not c.logging.progress) as pbar:
            while self.state.step_in_phase < total:
                step = self.state.step_in_phase
                t = time.time()
                idx = self._step_indices(phase, len(data), bs, index, step, total)
                examples = [data[i] for i in idx]
                if phase.kind == "sft":
                    stats = ray.get(self.policy.first("train_step", [LossPart("sft", collate_sft(examples, self.pad_id))]))
                elif c.schedule.preference == "ppo":
                    stats = self._ppo_step(examples, index, step, mix_for)
                else:
                    stats = self._dpo_step(examples, mix_for(step))
                stats["time/step_s"] = time.time() - t
                self.state.step_in_phase += 1
                self.state.global_step += 1
                self.metrics.log(self.state.global_step, stats, phase=phase.name)
                pbar.update(1)
                pbar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in stats.items()
                                  if k in ("sft/loss", "pref/loss", "ppo/score", "ppo/kl", "ewc/penalty")})
                every = c.run.checkpoint_every
                if every and self.state.step_in_phase % every == 0 and self.state.step_in_phase < total:
                    self._checkpoint()
        fisher = self._fisher_batches(phase, data) if phase.record_anchor and c.ewc.method == "fisher" else None
        end_stats = ray.get(self.policy.first("end_phase", fisher))
        self._sync_rollout()  # after every optimiser phase: the next PPO phase must not sample a stale policy
        eval_stats = self.evaluate()
        self.metrics.log(self.state.global_step, {**end_stats, **eval_stats}, phase=phase.name)
        self.state.completed_phases.append(phase.name)
        self.state.phase_index += 1
        self.state.step_in_phase = 0
        self._checkpoint()

    def _fisher_batches(self, phase: Phase, data) -> list[LossPart]:
        """``ewc.fisher_batches`` loss parts of the phase's own objective (``ewc.fisher_loss``).

        SFT: instruction batches. DPO family: preference batches with their
        reference log-probs (``phase``), or the chosen responses' SFT
        likelihood (``sft``). PPO: fresh samples of the policy, whose masked
        NLL gives the model Fisher. Batches are drawn with a fixed
        per-phase seed, so a resumed run takes the same ones.
        """
        c = self.cfg
        n, bs = c.ewc.fisher_batches, c.sft.batch_size
        draw = lambda k: [data[i] for i in self._batch_indices(len(data), bs, 20_000 + self.state.phase_index, k)]  # noqa: E731
        if phase.kind == "sft":
            return [LossPart("sft", collate_sft(draw(k), self.pad_id)) for k in range(n)]
        if c.schedule.preference == "dpo":
            out = []
            for k in range(n):
                ex = draw(k)
                if c.ewc.fisher_loss == "sft" and "chosen_input_ids" in ex[0]:
                    ex = [{"input_ids": e["chosen_input_ids"], "loss_mask": e["chosen_loss_mask"]} for e in ex]
                    out.append(LossPart("sft", collate_sft(ex, self.pad_id)))
                else:
                    out.append(self._preference_part(ex))
            return out
        exp = self._rollout(draw(0), seed=c.run.seed * 100_003 + 77_777 + self.state.phase_index)
        return [LossPart("ppo", mb) for mb in exp.minibatches(max(1, -(-len(exp) // n)))]

    # ------------------------------------------------------------- DPO step
    def _preference_part(self, examples: list[dict]) -> LossPart:
        """A collated preference batch with its reference log-probs and the loss's resolved options."""
        kind = self.pref_spec.kind
        batch = collate_pairwise(examples, self.pad_id) if kind == "pairwise" else collate_pointwise(examples, self.pad_id)
        batch["ref_logps"] = ray.get(self.reference.first("sequence_logps", batch))
        return LossPart(kind, batch, options=dict(self.pref_options))

    def _dpo_step(self, examples: list[dict], mix: LossPart | None) -> dict:
        parts = [self._preference_part(examples)] + ([mix] if mix else [])
        return ray.get(self.policy.first("train_step", parts))

    # ------------------------------------------------------------- PPO step
    def _rollout(self, examples: list[dict], seed: int, greedy: bool = False, n: int | None = None) -> Experience:
        c = self.cfg.ppo
        sampling = SamplingSettings(temperature=0.0 if greedy else c.temperature, top_p=c.top_p, top_k=c.top_k,
                                    max_new_tokens=c.max_new_tokens, n=n or (1 if greedy else c.samples_per_prompt),
                                    seed=seed)
        k = len(self.rollout.actors)
        bounds = [round(i * len(examples) / k) for i in range(k + 1)]
        refs = []
        for i, actor in enumerate(self.rollout.actors):
            part = examples[bounds[i]:bounds[i + 1]]
            if part:
                refs.append(actor.generate.remote([e["prompt_ids"] for e in part], sampling,
                                                  [e["prompt_text"] for e in part], [e["meta"] for e in part]))
        return Experience.concat(ray.get(refs), self.pad_id)

    def _ppo_step(self, examples: list[dict], phase_index: int, step: int, mix_for) -> dict:
        c = self.cfg.ppo
        t = time.time()
        exp = self._rollout(examples, seed=self.cfg.run.seed * 100_003 + phase_index * 1_009 + step)
        gen_s = time.time() - t
        exp_ref = ray.put(exp)
        futures = {
            "logprobs": self.policy.first("logprobs", exp_ref),
            "ref_logprobs": self.reference.first("logprobs", exp_ref),
            "scores": self.reward.first("score", exp_ref),
        }
        if self.critic is not None:
            futures["values"] = self.critic.first("values", exp_ref)
        exp = exp.with_fields(**dict(zip(futures, ray.get(list(futures.values())))))
        score_s = time.time() - t - gen_s
        exp, stats = compute_targets(exp, c, self.cfg.ppo.samples_per_prompt)
        stats["time/generate_s"] = gen_s
        stats["time/score_s"] = score_s  # old/reference log-probs, rewards and values, in parallel
        stats["perf/gen_tokens_per_s"] = float(exp.action_mask.sum()) / max(gen_s, 1e-6)
        gen = torch.Generator().manual_seed(self.cfg.run.seed + step)
        agg: dict[str, list[float]] = {}
        opt_step = step * c.optimizer_steps_per_step(len(examples))
        for _ in range(c.ppo_epochs):
            for mb in exp.minibatches(c.mini_batch_size, gen):
                mix = mix_for(opt_step)
                opt_step += 1
                parts = [LossPart("ppo", mb, options={"clip_eps": c.clip_eps})] + ([mix] if mix else [])
                refs = [self.policy.first("train_step", parts)]
                if self.critic is not None:
                    refs.append(self.critic.first("train_step", mb, c.value_clip_eps))
                for r in ray.get(refs):
                    for k, v in r.items():
                        agg.setdefault(k, []).append(v)
        stats.update({k: sum(v) / len(v) for k, v in agg.items()})
        t_sync = time.time()
        stats["time/train_s"] = t_sync - t - gen_s - score_s
        self._sync_rollout()
        stats["time/sync_s"] = time.time() - t_sync
        return stats

    def _sync_rollout(self) -> None:
        """Push the policy's current weights to every rollout replica (by version).

        A no-op when the replicas already hold that version (e.g. the probe
        right after a phase-end sync). The exported state dict goes from the
        policy actor to the replicas as one object-store reference: the driver
        never pulls the weights into its own process.
        """
        if self.rollout is None:
            return
        version = ray.get(self.policy.first("weights_version"))
        if version == self._rollout_version:
            return
        packed = self.policy.first("export_weights")
        ray.get(self.rollout.call("load_exported", packed))
        self._rollout_version = version

    _rollout_version: int | None = None  # the policy version the rollout replicas hold

    # ------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        """Per-phase probes: held-out SFT loss and mean reward of greedy answers."""
        c, out = self.cfg, {}
        if self.eval_sft is not None:
            losses = []
            for i in range(0, len(self.eval_sft), c.sft.batch_size):
                batch = collate_sft([self.eval_sft[j] for j in range(i, min(i + c.sft.batch_size, len(self.eval_sft)))], self.pad_id)
                losses.append((ray.get(self.policy.first("eval_sft_loss", batch)), batch["input_ids"].shape[0]))
            out["eval/sft_loss"] = sum(l * n for l, n in losses) / sum(n for _, n in losses)
        if self.eval_prompts is not None and self.rollout is not None and self.reward is not None:
            self._sync_rollout()
            exp = self._rollout(list(self.eval_prompts), seed=0, greedy=True)
            scores = ray.get(self.reward.first("score", exp))
            out["eval/reward"] = float(scores.mean())
            out["eval/response_len"] = float(exp.action_mask.sum(1).float().mean())
        self.last_eval = out
        return out

    # ------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> None:
        def write(folder: Path) -> None:
            refs = [self.policy.first("save_state", str(folder / "policy.pt"))]
            if self.state.reference_version is not None:  # a refreshed reference is not on disk anywhere else
                refs.append(self.reference.first("save_weights", str(folder / "reference.safetensors")))
            if self.critic is not None:
                refs.append(self.critic.first("save_state", str(folder / "critic.pt")))
            ray.get(refs)
        self.ckpt.save(self.state, write)

    def _load_actor_states(self, folder: Path) -> None:
        ray.get(self.policy.first("load_state", str(folder / "policy.pt")))

    def _plot(self) -> None:
        try:
            from hbat.orchestrator.plots import plot_training_curves

            plot_training_curves(self.run_dir)
        except Exception as exc:  # a plot must never fail a finished run
            log.warning("could not draw training curves: %s", exc)

    def shutdown(self) -> None:
        try:
            self.placement.shutdown()
        except Exception:
            pass


def train(cfg: Config, resume: bool = False) -> dict:
    driver = Driver(cfg, resume=resume)
    try:
        return driver.run()
    finally:
        driver.shutdown()
