"""The PPO critic: per-token values and its own optimizer. Kept separate from
the policy so it can be placed, sized and checkpointed on its own."""

from __future__ import annotations

import torch

from hbat.actors.experience import Experience
from hbat.actors.training import (
    build_optimizer,
    clip_and_step,
    optim_config,
    setup_actor,
)
from hbat.models import critic_values, load_critic
from hbat.models.atomic import atomic_torch_save
from hbat.models.precision import precision as get_precision
from hbat.objectives import masked_mean, ppo_value_loss


class CriticWorker:
    def __init__(self, model: str, *, precision: str = "fp32", device: str = "auto", seed: int = 0,
                 disable_dropout: bool = True, torch_threads: int | None = None):
        self.device = setup_actor(device, torch_threads, seed)
        self.precision = get_precision(precision)
        self.model = load_critic(model, dtype=self.precision.train_dtype, device=self.device, trainable=True,
                                 no_dropout=disable_dropout)
        self.opt = self.sched = None
        self.optim = optim_config(None)
        self.total_steps = 1

    def configure(self, optim, total_steps: int) -> None:
        self.optim = optim_config(optim)
        self.total_steps = total_steps
        self.opt, self.sched = build_optimizer(self.model, self.optim, total_steps)

    @torch.no_grad()
    def values(self, exp: Experience) -> torch.Tensor:
        self.model.eval()
        e = exp.to(self.device)
        with self.precision.autocast(self.device):
            out = critic_values(self.model, e.sequences, e.attention_mask).float().cpu()
        self.model.train()
        return out * exp.action_mask

    def train_step(self, exp: Experience, clip_eps: float = 0.2) -> dict:
        if self.opt is None:
            raise RuntimeError("configure() must be called before train_step()")
        self.model.train()
        e = exp.to(self.device)
        with self.precision.autocast(self.device):
            v = critic_values(self.model, e.sequences, e.attention_mask).float()
        loss, clipfrac = ppo_value_loss(v, e.values, e.returns, e.action_mask, clip_eps)
        loss.backward()
        norm = clip_and_step(self.model, self.opt, self.sched, self.optim.grad_clip)
        return {"critic/value_loss": loss.item(), "critic/clipfrac": float(clipfrac), "critic/grad_norm": norm,
                "critic/value_mean": float(masked_mean(v.detach(), e.action_mask))}

    def save_state(self, path: str) -> str:
        atomic_torch_save({"model": self.model.state_dict(), "opt": self.opt.state_dict() if self.opt else None,
                           "sched": self.sched.state_dict() if self.sched else None,
                           "optim": self.optim.model_dump(), "total_steps": self.total_steps}, path)
        return path

    def load_state(self, path: str) -> None:
        st = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(st["model"])
        if st["opt"] is not None:
            self.configure(st["optim"], st["total_steps"])
            self.opt.load_state_dict(st["opt"])
            self.sched.load_state_dict(st["sched"])

    def ping(self) -> bool:
        return True
