"""Online RL phases: PPO with a critic (GAE), GRPO and RLOO (group baselines).

One step reads as the flow of experience through the roles:

    rollout  -> the rollout replicas sample responses to the step's prompts
    score    -> rewards, and the old-policy/reference log-probs and values that are used
    targets  -> token rewards, advantages and returns (driver-side tensor math)
    update   -> ppo_epochs x mini-batches of policy (and critic) optimizer steps
    sync     -> the rollout replicas load the updated policy weights
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from hbat.actors.experience import Experience
from hbat.actors.policy import LossPart
from hbat.orchestrator.advantages import compute_targets
from hbat.orchestrator.steps.base import StepContext, StepRunner, mix
from hbat.orchestrator.worker_group import GroupCall


class PPOStep(StepRunner):
    name = "ppo"
    section = "ppo"
    batch_key = "prompts_per_step"

    @classmethod
    def config_errors(cls, cfg) -> list[str]:
        errors = []
        if not cfg.data.prompts:
            errors.append("schedule.preference 'ppo' needs data.prompts")
        if not cfg.reward_uses_model and not cfg.reward_model.rule_rewards:
            errors.append("PPO needs a reward: model.reward, data.preference (to train a reward model) "
                          "or reward_model.rule_rewards")
        return errors

    @classmethod
    def extra_roles(cls, cfg) -> list[str]:
        """The reference only with a KL term: with ``ppo.kl_coef: 0`` nothing reads it."""
        return (["reward", "rollout"] + (["critic"] if cfg.ppo.advantage == "gae" else [])
                + (["reference"] if cfg.ppo.kl_coef > 0 else []))

    @property
    def data_key(self) -> str:
        return "prompts"

    def optimizer_steps(self, steps: int, batch_size: int) -> int:
        return steps * self.cfg.ppo.optimizer_steps_per_step(batch_size)

    # -- the step, as named stages ------------------------------------------------
    def step(self, examples, ctx: StepContext) -> dict:
        t0 = time.time()
        exp = self.rollout(examples, seed=self.cfg.run.seed * 100_003 + ctx.phase_index * 1_009 + ctx.step)
        t1 = time.time()
        exp = self.score(exp)
        t2 = time.time()
        exp, stats = compute_targets(exp, self.cfg.ppo, self.cfg.ppo.samples_per_prompt)
        stats.update(self.update(exp, ctx, first_optimizer_step=ctx.step * self.cfg.ppo.optimizer_steps_per_step(len(examples))))
        t3 = time.time()
        self.roles.sync_rollout()
        stats.update({"time/generate_s": t1 - t0, "time/score_s": t2 - t1, "time/train_s": t3 - t2,
                      "time/sync_s": time.time() - t3,
                      "perf/gen_tokens_per_s": float(exp.action_mask.sum()) / max(t1 - t0, 1e-6)})
        return stats

    def rollout(self, examples: list[dict], seed: int) -> Experience:
        return self.roles.sample(examples, seed=seed)

    def score(self, exp: Experience) -> Experience:
        """Old-policy and reference log-probs, reward scores and critic values.

        Every role's replicas (a sharded group's ranks) each take a slice of
        the rows. Only the passes whose results are used run:

        * the reference forward only with a KL term (``ppo.kl_coef > 0``);
        * the old-policy forward only when the batch gets more than one
          update (:meth:`reuses_rollout`) or the KL term needs it -- with one
          update per batch the training forward's own detached log-probs are
          the old ones (ratio exactly 1, as TRL does), so a second identical
          forward is wasted;
        * the reward model only when ``reward_model.model_weight`` is non-zero
          (the reward actor then holds rules only, see ``Config.reward_uses_model``);
        * the critic's values with autograd kept when the batch gets one
          update: its optimizer step then backpropagates through this forward
          instead of running it again (``CriticWorker.values``).

        The calls overlap only when every role they go to has its own GPU;
        roles sharing CPU cores run one after another, each with all its
        threads, instead of three processes fighting over the same cores.
        """
        r, c = self.roles, self.cfg.ppo
        jobs = {"scores": ("reward", lambda: r.reward.map_rows("score", exp))}
        if c.kl_coef > 0:
            jobs["ref_logprobs"] = ("reference", lambda: r.reference.map_rows("logprobs", exp))
        if c.kl_coef > 0 or self.reuses_rollout(len(exp)):
            jobs["logprobs"] = ("policy", lambda: r.policy.map_rows("logprobs", exp))
        if r.critic is not None:
            # one critic step on this batch: the critic keeps this forward's graph for it
            single = not self.reuses_rollout(len(exp))
            jobs["values"] = ("critic", lambda: r.critic.map_rows("values", exp, single))
        if self.overlap(role for role, _ in jobs.values()):
            calls = {k: start() for k, (_, start) in jobs.items()}
            return exp.with_fields(**{k: call.get() for k, call in calls.items()})
        return exp.with_fields(**{k: start().get() for k, (_, start) in jobs.items()})

    def overlap(self, roles) -> bool:
        """Run calls to these roles at the same time only when each has its own
        accelerator; roles on CPU share the machine's cores, and two torch
        processes each running ``torch_threads`` threads on them only slow
        each other down."""
        return all(getattr(self.cfg.resources, role).num_gpus > 0 for role in roles)

    def reuses_rollout(self, rows: int) -> bool:
        """True when a rollout batch of ``rows`` gets more than one optimizer step
        (several ``ppo_epochs`` or mini-batches): only then can the policy have
        moved between sampling and a later update, so only then are stored
        old-policy log-probs needed for the importance ratio."""
        return self.cfg.ppo.ppo_epochs > 1 or rows > self.cfg.ppo.mini_batch_size

    def update(self, exp: Experience, ctx: StepContext, first_optimizer_step: int) -> dict:
        """``ppo_epochs`` passes of shuffled mini-batches; one policy (and critic) optimizer step each."""
        c, r = self.cfg.ppo, self.roles
        gen = torch.Generator().manual_seed(self.cfg.run.seed + ctx.step)
        agg: dict[str, list[float]] = {}
        opt_step = first_optimizer_step
        for _ in range(c.ppo_epochs):
            # one update per batch: the whole batch in rollout order (a shuffle
            # changes nothing), so the critic's rows are those it scored
            batches = exp.minibatches(c.mini_batch_size, gen) if self.reuses_rollout(len(exp)) else [exp]
            for mb in batches:
                parts = mix([LossPart("ppo", mb, options={"clip_eps": c.clip_eps})], ctx, opt_step)
                opt_step += 1
                starts = [lambda parts=parts: r.policy.train(parts, self.optim)]
                if r.critic is not None:
                    starts.append(lambda mb=mb: self.train_critic(mb))
                if self.overlap(["policy", "critic"] if r.critic is not None else ["policy"]):
                    outs = [call.get() for call in [start() for start in starts]]
                else:
                    outs = [start().get() for start in starts]
                for out in outs:
                    for k, v in out.items():
                        agg.setdefault(k, []).append(v)
        return {k: sum(v) / len(v) for k, v in agg.items()}

    def train_critic(self, mb: Experience) -> GroupCall:
        """A critic step on ``mb``, each rank of its group on a slice (token-mean over the whole mini-batch)."""
        return self.roles.critic.train_rows("train_step", mb, int(mb.action_mask.sum()), self.cfg.ppo.value_clip_eps)

    def fisher_parts(self, draw, n, phase_index):
        """Fresh samples of the policy: the masked NLL of its own samples gives the model Fisher."""
        exp = self.rollout(draw(0), seed=self.cfg.run.seed * 100_003 + 77_777 + phase_index)
        return [LossPart("ppo", mb) for mb in exp.minibatches(max(1, -(-len(exp) // n)))]

    # -- the critic lives as long as the run; its optimizer state only during PPO phases
    def begin_run(self, optimizer_steps: int, resume_from: Path | None) -> None:
        critic = self.roles.critic
        if critic is None:
            return
        critic.run("configure", self.cfg.ppo.critic_optim, max(1, optimizer_steps))
        if resume_from is not None:
            for name in ("critic", "critic.pt"):  # a folder now; one file in older checkpoints
                if (resume_from / name).exists():
                    critic.run("load_state", str(resume_from / name))
                    break

    def begin_phase(self) -> None:
        if self.roles.critic is not None:
            self.roles.critic.run("begin_phase")

    def end_phase(self) -> None:
        if self.roles.critic is not None:
            self.roles.critic.run("end_phase")

    def save_state(self, folder: Path) -> list:
        critic = self.roles.critic
        return list(critic.all("save_state", str(folder / "critic")).refs) if critic is not None else []
