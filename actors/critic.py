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

    def configure(self, optim, total_steps: int) -> None:
        self.optim = optim_config(optim)
        self.total_steps = total_steps
        self.opt, self.sched = build_optimizer(self.model, self.optim, total_steps)

    def _values(self, e: Experience) -> torch.Tensor:
        with self.precision.autocast(self.device):
            return critic_values(self.model, e.sequences, e.attention_mask).float()

    @torch.no_grad()
    def values(self, exp: Experience) -> torch.Tensor:
        self.model.eval()
        out = self._values(exp.to(self.device)).cpu()
        self.model.train()
        return out * exp.action_mask

    def train_step(self, exp: Experience, clip_eps: float = 0.2, total: int | None = None) -> dict:
        """One optimizer step on the clipped value loss, a mean over response tokens.

        ``total``: the whole batch's response tokens when the driver split
        it over the group's ranks; each rank's token mean is weighted by its
        share, so the group-summed gradient is the whole batch's."""
        if self.opt is None:
            raise RuntimeError("configure() must be called before train_step()")
        self.model.train()
        e = exp.to(self.device)
        v = self._values(e)
        loss, clipfrac = ppo_value_loss(v, e.values, e.returns, e.action_mask, clip_eps)
        share = float(e.action_mask.sum()) / total if total else 1.0
        (share * self.grad_scale * loss).backward()
        stats = self.sum_stats({"critic/value_loss": loss.item() * share, "critic/clipfrac": float(clipfrac) * share,
                                "critic/value_mean": float(masked_mean(v.detach(), e.action_mask)) * share})
        stats["critic/grad_norm"] = self.clip_and_step(self.opt, self.sched, self.optim.grad_clip)
        return stats

    def save_state(self, path: str) -> str:
        """DCP folder (every rank writes its shards), like the policy's."""
        return self.save_training_state(path, self.opt, self.sched, {},
                                        {"optim": self.optim.model_dump(), "total_steps": self.total_steps})

    def load_state(self, path: str) -> None:
        if str(path).endswith(".pt"):  # an older hbat's single file
            st = torch.load(path, map_location="cpu", weights_only=False)
            self.model.load_state_dict(st["model"])
            if st["opt"] is not None:
                self.configure(st["optim"], st["total_steps"])
                self.opt.load_state_dict(st["opt"])
                self.sched.load_state_dict(st["sched"])
            return
        from hbat.actors.sharded_state import read_meta

        m = read_meta(path)
        self.optim, self.total_steps = optim_config(m["optim"]), m["total_steps"]
        _, self.opt, self.sched, _ = self.load_training_state(path, self.optim, self.total_steps)

    def ping(self) -> bool:
        return True
