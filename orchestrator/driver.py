"""The single controller: reads top to bottom like the training recipe.

validate config and data -> start Ray and place the roles -> (train a reward
model) -> run the plan's phases in order, checkpointing after each -> export
the final policy. What differs between algorithms (data, budget, the step,
Fisher batches, a critic) lives in the step runners (``orchestrator/steps``);
the driver only walks the plan. It talks to actors through their public
methods; data moves as tensors, dataclasses and Ray object refs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from tqdm.auto import tqdm

from hbat.actors.policy import LossPart
from hbat.actors.reward import load_rule
from hbat.models.atomic import atomic_write_bytes
from hbat.orchestrator.checkpoint import CheckpointManager, RunState, wait_all
from hbat.orchestrator.config import Config, ConfigError, OptimConfig, dump_config
from hbat.orchestrator.data import collate_sft
from hbat.orchestrator.dispatch import split_parts
from hbat.orchestrator.metrics import MetricsLogger
from hbat.orchestrator.placement import Placement
from hbat.orchestrator.ray_runtime import ensure_ray
from hbat.orchestrator.reward_stage import train_reward_model
from hbat.orchestrator.roles import Roles
from hbat.orchestrator.run_data import RunData, batch_indices
from hbat.orchestrator.schedules import Phase, build_plan, reference_used_before_refresh, unused_anchors
from hbat.orchestrator.steps import StepContext, StepRunner, runner_class
from hbat.orchestrator.worker_group import GroupCall

log = logging.getLogger("hbat")


@dataclass(frozen=True)
class PhaseSetup:
    """What one phase trains on: its data shard, batch size, step count,
    optimizer section, and the SFT batch size of its mixed-in term (ptx / joint)."""

    data: object
    batch_size: int
    steps: int
    optim: OptimConfig
    sft_batch_size: int


def run_roles(cfg: Config) -> list[str]:
    """The roles a run places: the policy always; what the plan's step runners
    use (the reference only when a phase reads it: a preference loss, or PPO
    with a KL term); rollout (and reward, when one can be had) for the per-phase
    probes on ``data.eval_prompts``. Preflight sizes the placement from this too."""
    roles = ["policy"]
    kinds = {p.kind for p in build_plan(cfg)} | {"sft"}
    for kind in sorted(kinds):
        for r in runner_class(kind, cfg.schedule.preference).extra_roles(cfg):
            if r not in roles:
                roles.append(r)
    if cfg.data.eval_prompts:
        if "rollout" not in roles:
            roles.append("rollout")
        if "reward" not in roles and (cfg.reward_uses_model or cfg.reward_model.rule_rewards):
            roles.append("reward")
    return roles


class Driver:
    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg = cfg
        self.run_dir = cfg.run_dir()
        self.resume = resume
        self.ckpt = CheckpointManager(self.run_dir, keep=cfg.run.keep_checkpoints, create=False)
        self.state = RunState()
        self.plan: list[Phase] = build_plan(cfg)
        # the runner class of every phase kind in the plan (config errors surfaced at validation)
        # the runner of every phase kind in the plan; SFT always (the mixed-in term of ptx / joint uses it)
        kinds = ["sft"] + [p.kind for p in self.plan if p.kind != "sft"]
        self.runner_classes = {k: runner_class(k, cfg.schedule.preference) for k in kinds}
        for path in cfg.reward_model.rule_rewards:
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
        self.last_eval: dict = {}

    # ------------------------------------------------------------------ setup
    def load_data(self) -> None:
        """Tokenise and validate every file up front (bad data fails before Ray starts)."""
        self.data = RunData.load(self.cfg)
        self.pad_id = self.data.pad_id
        self.runners = {kind: cls(self.cfg, self.data, None) for kind, cls in self.runner_classes.items()}
        for runner in self.runners.values():
            ds = runner.dataset()
            if len(ds) < self.cfg.schedule.rounds:
                raise ConfigError(f"data.{runner.data_key}: {len(ds)} records cannot be split into "
                                  f"schedule.rounds={self.cfg.schedule.rounds} shards")

    def needed_roles(self) -> list[str]:
        return run_roles(self.cfg)

    def start(self) -> None:
        c = self.cfg
        ensure_ray(c.resources.address, c.resources.num_cpus)
        self.role_names = self.needed_roles()
        self.placement = Placement(c.resources, self.role_names)
        self.roles = Roles(c, self.placement, self.pad_id)
        for role in ("policy", "reference", "rollout"):
            if role in self.role_names:
                self.roles.spawn(role)
        for runner in self.runners.values():
            runner.roles = self.roles
        ray.get([ref for g in (self.roles.policy, self.roles.reference) if g is not None for ref in g.call("ping")])

    def start_scorers(self) -> None:
        """Reward and critic actors, once a reward model exists (or none is used)."""
        rm_path = self.cfg.model.reward or self.state.reward_model
        for role in ("reward", "critic"):
            if role in self.role_names:
                self.roles.spawn(role, reward_model=rm_path if self.cfg.reward_uses_model else None)

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
            if "reward" in self.role_names and c.reward_uses_model and c.model.reward is None \
                    and self.state.reward_model is None:
                self.state.reward_model = train_reward_model(c, self.data.get("preference"), self.pad_id,
                                                             self.placement, self.metrics,
                                                             self.run_dir / "reward_model")
            self.start_scorers()
            where = self.roles.check_shared_folder(self.run_dir)
            atomic_write_bytes(self.run_dir / "placement.json", json.dumps(where, indent=2).encode())
            folder = resumed[1] if resumed else None
            if folder is not None:
                legacy = folder / "policy.pt"  # an older hbat's single-file state
                self.roles.policy.run("load_state", str(legacy if legacy.is_file() else folder / "policy"))
                if self.state.reference_version is not None and (folder / "reference.safetensors").is_file():
                    # not written when the plan refreshes the reference before using it again
                    ray.get(self.roles.reference.call("load_weights_file", str(folder / "reference.safetensors")))
                log.info("resumed at phase %d step %d", self.state.phase_index, self.state.step_in_phase)
            for kind, runner in self.runners.items():
                runner.begin_run(self.optimizer_steps_of(kind), folder)
            self.roles.sync_rollout()
            t0 = time.time()
            while self.state.phase_index < len(self.plan):
                self.run_phase(self.state.phase_index, self.plan[self.state.phase_index])
            final = self.run_dir / "final"
            self.roles.policy.run("save_pretrained", str(final))
            self.state.finished = True
            summary = {"final_checkpoint": str(final), "global_steps": self.state.global_step,
                       "phases": len(self.plan), "wall_s": round(time.time() - t0, 1), **self.last_eval}
            atomic_write_bytes(self.run_dir / "summary.json", json.dumps(summary, indent=2).encode())
            self._plot()
            return summary
        finally:
            self.metrics.close()

    # -------------------------------------------------------------- phases
    def runner(self, phase: Phase) -> StepRunner:
        return self.runners[phase.kind]

    def phase_setup(self, phase: Phase) -> PhaseSetup:
        """What a phase trains on and how long; ``joint_budget`` phases get their
        round's SFT and preference budgets combined (see ``Phase``)."""
        own = self._own_setup(self.runner(phase), phase)
        if not phase.joint_budget:
            return own
        sft = self._own_setup(self.runners["sft"], phase)
        S, P = sft.steps, own.steps
        lr = (S * sft.optim.lr + P * own.optim.lr) / (S + P)
        return PhaseSetup(own.data, max(1, round(own.batch_size * P / (S + P))), S + P,
                          own.optim.model_copy(update={"lr": lr}), max(1, round(sft.batch_size * S / (S + P))))

    def _own_setup(self, runner: StepRunner, phase: Phase) -> PhaseSetup:
        data = runner.dataset().shard(phase.num_shards, phase.shard)
        bs = runner.batch_size
        steps = phase.steps if phase.steps is not None else (runner.steps_per_phase or max(1, -(-len(data) // bs)))
        return PhaseSetup(data, bs, steps, runner.optim, self.cfg.sft.batch_size)

    def optimizer_steps(self, phase: Phase, setup: PhaseSetup) -> int:
        """Optimizer steps of a phase (its LR schedule's length)."""
        return self.runner(phase).optimizer_steps(setup.steps, setup.batch_size)

    def optimizer_steps_of(self, kind: str) -> int:
        """Optimizer steps over the run of all phases of ``kind`` (e.g. the critic's schedule)."""
        return sum(self.optimizer_steps(p, self.phase_setup(p)) for p in self.plan if p.kind == kind)

    def _batch(self, data, bs: int, phase_index: int, step: int) -> list[dict]:
        return [data[i] for i in batch_indices(self.cfg.run.seed, len(data), bs, phase_index, step)]

    def _refresh_reference(self) -> None:
        """The reference becomes the current policy (``reference.refresh``); nothing
        to refresh in a run whose phases never read a reference."""
        if self.roles.reference is None:
            return
        version = self.roles.refresh_reference()
        self.state.reference_version = version
        log.info("reference refreshed to the policy (weight version %d)", version)

    def run_phase(self, index: int, phase: Phase) -> None:
        c, runner = self.cfg, self.runner(phase)
        setup = self.phase_setup(phase)
        if self.state.step_in_phase == 0:
            if phase.refresh_reference:
                self._refresh_reference()
            self.roles.policy.run("begin_phase", phase.kind, setup.optim, self.optimizer_steps(phase, setup),
                                  phase.anchor, c.ewc if phase.record_anchor else None)
            runner.begin_phase()
            self.metrics.phase_boundary(self.state.global_step, index, phase.name)
        sft_shard = self.data.get("sft").shard(phase.num_shards, phase.shard) if phase.sft_mix else None

        def mix_for(opt_step: int) -> LossPart | None:
            """ptx / joint: a fresh SFT batch for every optimizer step of the phase."""
            if sft_shard is None:
                return None
            batch = self._batch(sft_shard, setup.sft_batch_size, index + 10_000, opt_step)
            return LossPart("sft", collate_sft(batch, self.pad_id), weight=phase.sft_mix)

        desc = f"phase {index + 1}/{len(self.plan)} {phase.name}"
        with tqdm(total=setup.steps, initial=self.state.step_in_phase, desc=desc,
                  disable=not c.logging.progress) as pbar:
            while self.state.step_in_phase < setup.steps:
                step, t = self.state.step_in_phase, time.time()
                idx = runner.step_indices(len(setup.data), setup.batch_size, index, step, setup.steps)
                stats = runner.step([setup.data[i] for i in idx], StepContext(index, step, mix_for))
                stats["time/step_s"] = time.time() - t
                self.state.step_in_phase += 1
                self.state.global_step += 1
                self.metrics.log(self.state.global_step, stats, phase=phase.name)
                pbar.update(1)
                pbar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in stats.items()
                                  if k in ("sft/loss", "pref/loss", "ppo/score", "ppo/kl", "ewc/penalty")})
                every = c.run.checkpoint_every
                if every and self.state.step_in_phase % every == 0 and self.state.step_in_phase < setup.steps:
                    self._checkpoint()
        fisher = None
        if phase.record_anchor and c.ewc.method == "fisher":
            # batches drawn with a fixed per-phase seed, so a resumed run takes the same ones
            draw = lambda k: self._batch(setup.data, c.sft.batch_size, 20_000 + index, k)  # noqa: E731
            fisher = runner.fisher_parts(draw, c.ewc.fisher_batches, index)
        end_stats = self.end_phase(fisher)
        runner.end_phase()
        unused = unused_anchors(self.plan, index)
        if unused:
            self.roles.policy.run("release_anchors", unused)
        self.roles.sync_rollout()  # after every optimiser phase: the next PPO phase must not sample a stale policy
        eval_stats = self.evaluate()
        self.metrics.log(self.state.global_step, {**end_stats, **eval_stats}, phase=phase.name)
        self.state.completed_phases.append(phase.name)
        self.state.phase_index += 1
        self.state.step_in_phase = 0
        self._checkpoint()

    def end_phase(self, fisher: list[LossPart] | None) -> dict:
        """The policy records the phase's anchor; Fisher batches are split over its ranks."""
        g = self.roles.policy
        if not fisher or not g.sharded:
            return g.run("end_phase", fisher)
        per_rank = split_parts(fisher, g.world)
        return GroupCall([a.end_phase.remote(parts) for a, parts in zip(g.actors, per_rank)]).get()

    # ------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        """Per-phase probes: held-out SFT loss and mean reward of greedy answers."""
        c, out, r = self.cfg, {}, self.roles
        eval_sft, eval_prompts = self.data.get("eval_sft"), self.data.get("eval_prompts")
        if eval_sft is not None:
            losses = []
            bs = c.sft.batch_size
            for i in range(0, len(eval_sft), bs):
                batch = collate_sft([eval_sft[j] for j in range(i, min(i + bs, len(eval_sft)))], self.pad_id)
                losses.append((r.policy.run("eval_sft_loss", batch), batch["input_ids"].shape[0]))
            out["eval/sft_loss"] = sum(l * n for l, n in losses) / sum(n for _, n in losses)
        if eval_prompts is not None and r.rollout is not None and r.reward is not None:
            r.sync_rollout()
            exp = r.sample(list(eval_prompts), seed=0, greedy=True)
            scores = r.reward.map_rows("score", exp).get()
            out["eval/reward"] = float(scores.mean())
            out["eval/response_len"] = float(exp.action_mask.sum(1).float().mean())
        self.last_eval = out
        return out

    # ------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> None:
        def write(folder: Path) -> None:
            refs = list(self.roles.policy.all("save_state", str(folder / "policy")).refs)
            # a refreshed reference is not on disk anywhere else -- but only worth
            # writing if a phase uses it before the plan refreshes it again
            # (a version exists only where a reference actor was refreshed: see _refresh_reference)
            if self.state.reference_version is not None and reference_used_before_refresh(
                    self.plan, self.state.phase_index, self.state.step_in_phase):
                refs.append(self.roles.reference.first("save_weights", str(folder / "reference.safetensors")))
            for runner in self.runners.values():
                refs += runner.save_state(folder)
            wait_all(refs)  # every actor's result read: a full disk fails them all
        self.ckpt.save(self.state, write)

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
