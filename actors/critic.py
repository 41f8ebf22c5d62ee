"""The PPO critic: per-token values and its own optimizer. Kept separate from
the policy so it can be placed, sized and checkpointed on its own; with
``replicas: N`` it is a data-parallel worker group like the policy."""

from __future__ import annotations

import torch

from hbat.actors.experience import Experience
from hbat.actors.trainer import ShardedTrainer
from hbat.actors.training import build_optimizer, optim_config, setup_actor
from hbat.models import critic_values, load_critic
from hbat.models.precision import precision as get_precision
from hbat.objectives import masked_mean, ppo_value_loss
from hbat.orchestrator.config import FSDPConfig


def _has_active_dropout(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


class CriticWorker(ShardedTrainer):
    def __init__(self, model: str, *, precision: str = "fp32", device: str = "auto", seed: int = 0,
                 disable_dropout: bool = True, torch_threads: int | None = None, gradient_checkpointing: bool = False,
                 shard: bool = False, fsdp: FSDPConfig | dict | None = None):
        self.device = setup_actor(device, torch_threads, seed)
        self.precision = get_precision(precision)
        self._init_sharding(shard, fsdp)
        self.model = load_critic(model, dtype=self.precision.train_dtype, device="cpu" if shard else self.device,
                                 trainable=True, no_dropout=disable_dropout,
                                 gradient_checkpointing=gradient_checkpointing)
        self.opt = self.sched = None
        self.optim = optim_config(None)
        self.total_steps = 1
        self.steps_done = 0  # optimizer steps over the run: where the run-long LR schedule is
        self._pending = None  # (sequences, attention_mask, values with graph) from values(keep_graph=True)

    def configure(self, optim, total_steps: int) -> None:
        """The run's critic optimizer settings; ``total_steps``: its steps over all PPO phases."""
        self.optim = optim_config(optim)
        self.total_steps = total_steps
        self.steps_done = 0
        self.opt = self.sched = None

    def begin_phase(self) -> None:
        """AdamW state for a PPO phase (kept when a mid-phase checkpoint restored it).

        Like the policy, the critic keeps optimizer state only while its
        phase runs, so a phase-boundary checkpoint carries none; the learning
        rate schedule still runs over the whole run (``steps_done``).
        """
        if self.opt is None:
            self.opt, self.sched = build_optimizer(self.model, self.optim, self.total_steps, start_step=self.steps_done)

    def end_phase(self) -> None:
        self.opt = self.sched = None
        self._pending = None

    def _values(self, e: Experience) -> torch.Tensor:
        # the prompt block ends where the first response token is scored; a
        # prompt's samples run it once (not under FSDP: one forward per step there)
        cols = e.action_mask.any(0).nonzero()
        prefix = int(cols[0]) + 1 if len(cols) and not self.sharded else 0
        with self.precision.compute(self.device, e.sequences.shape[1]):
            return critic_values(self.model, e.sequences, e.attention_mask, prefix).float()

    def values(self, exp: Experience, keep_graph: bool = False) -> torch.Tensor:
        """Per-token values of ``exp``'s rows, ``[B, T-1]``, zero outside the response.

        ``keep_graph=True`` (the driver asks for it when this batch will get
        exactly one critic step): the forward runs with autograd and is kept,
        and the following :meth:`train_step` on the same rows backpropagates
        through it instead of running the same forward again -- one critic
        forward per PPO iteration instead of two (a 135M critic: 3.5 s of a
        37 s CPU iteration). The values are the same either way: dropout is
        off, so train and eval mode compute the same function, and the value
        loss at ``v == old values`` has the same gradient (the clip is
        inactive). A critic with active dropout never keeps the graph.
        """
        self._pending = None
        e = exp.to(self.device)
        if keep_graph and not _has_active_dropout(self.model):
            self.model.train()
            v = self._values(e)
            self._pending = (e.sequences, e.attention_mask, v)
            return v.detach().cpu() * exp.action_mask
        self.model.eval()
        with torch.no_grad():
            out = self._values(e).cpu()
        self.model.train()
        return out * exp.action_mask

    def _take_pending(self, e: Experience) -> torch.Tensor | None:
        """The kept forward when it was run on exactly ``e``'s rows; else ``None``."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        seqs, mask, v = pending
        if seqs.shape == e.sequences.shape and torch.equal(seqs, e.sequences) and torch.equal(mask, e.attention_mask):
            return v
        return None

    def train_step(self, exp: Experience, clip_eps: float = 0.2, total: int | None = None) -> dict:
        """One optimizer step on the clipped value loss, a mean over response tokens.

        ``total``: the whole batch's response tokens when the driver split
        it over the group's ranks; each rank's token mean is weighted by its
        share, so the group-summed gradient is the whole batch's."""
        if self.opt is None:
            raise RuntimeError("configure() and begin_phase() must be called before train_step()")
        self.model.train()
        e = exp.to(self.device)
        v = self._take_pending(e)
        single_pass = v is not None
        if v is None:
            v = self._values(e)
        loss, clipfrac = ppo_value_loss(v, e.values, e.returns, e.action_mask, clip_eps)
        share = float(e.action_mask.sum()) / total if total else 1.0
        (share * self.grad_scale * loss).backward()
        stats = self.sum_stats({"critic/value_loss": loss.item() * share, "critic/clipfrac": float(clipfrac) * share,
                                "critic/value_mean": float(masked_mean(v.detach(), e.action_mask)) * share})
        stats["critic/grad_norm"] = self.clip_and_step(self.opt, self.sched, self.optim.grad_clip)
        stats["critic/single_pass"] = float(single_pass)  # 1: the scoring forward was reused
        self.steps_done += 1
        return stats

    def save_state(self, path: str) -> str:
        """DCP folder (every rank writes its shards), like the policy's."""
        return self.save_training_state(path, self.opt, self.sched, {},
                                        {"optim": self.optim.model_dump(), "total_steps": self.total_steps,
                                         "steps_done": self.steps_done})

    def load_state(self, path: str) -> None:
        if str(path).endswith(".pt"):  # an older hbat's single file
            st = torch.load(path, map_location="cpu", weights_only=False)
            self.model.load_state_dict(st["model"])
            if st["opt"] is not None:
                self.configure(st["optim"], st["total_steps"])
                self.begin_phase()
                self.opt.load_state_dict(st["opt"])
                self.sched.load_state_dict(st["sched"])
                self.steps_done = self.sched.last_epoch
            return
        from hbat.actors.sharded_state import read_meta

        m = read_meta(path)
        self.optim, self.total_steps = optim_config(m["optim"]), m["total_steps"]
        _, self.opt, self.sched, _ = self.load_training_state(path, self.optim, self.total_steps)
        sched = m.get("sched") or {}
        self.steps_done = m.get("steps_done", sched.get("last_epoch", 0))

    def ping(self) -> bool:
        return True
