"""Reward: a learned Bradley-Terry model, rule-based plug-ins, or both.

Rule-based (verifiable) rewards are plain functions users register by import
path ``"package.module:function"``; each is called as
``fn(prompt: str, response: str, meta: dict) -> float``. The final score is
``model_weight * model_score + rule_weight * sum(rules)``.
The same worker also trains the reward model (a run-to-completion stage) so
the scoring replica and the trained weights are one object; with
``resources.reward.replicas: N`` that stage is a data-parallel worker group
of N FSDP2 ranks, like the policy's (docs/architecture.md §5a).
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from hbat.actors.experience import Experience
from hbat.actors.gathered_export import export_gathered
from hbat.actors.trainer import ShardedTrainer
from hbat.actors.training import build_optimizer, optim_config, setup_actor, to_device
from hbat.models import load_reward_model, load_tokenizer, reward_scores, save_checkpoint
from hbat.models.precision import precision as get_precision
from hbat.objectives import bradley_terry_loss
from hbat.orchestrator.config import FSDPConfig

RuleFn = Callable[[str, str, dict], float]


def load_rule(path: str) -> RuleFn:
    """Import ``"pkg.module:fn"``; errors say which part is wrong."""
    if ":" not in path:
        raise ValueError(f"rule reward '{path}' must look like 'package.module:function'")
    mod_name, fn_name = path.split(":", 1)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"rule reward '{path}': cannot import module '{mod_name}' ({exc})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"rule reward '{path}': '{fn_name}' is not a function in '{mod_name}'")
    return fn


class Scorer(torch.nn.Module):
    """The reward model's scoring forward as one module: the root FSDP shards.

    ``reward_scores`` runs the backbone and the score head separately (it
    pools at the last real token itself); FSDP2 gathers a root's own
    parameters (embeddings, final norm, head) around the root's forward, so
    the root must be the module whose forward is the whole scoring pass.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return reward_scores(self.model, input_ids, attention_mask)


class RewardWorker(ShardedTrainer):
    def __init__(
        self,
        model: str | None,
        *,
        dtype: str = "float32",
        device: str = "auto",
        rules: list[str] | None = None,
        rule_weight: float = 1.0,
        model_weight: float = 1.0,
        trainable: bool = False,
        precision: str = "fp32",
        seed: int = 0,
        torch_threads: int | None = None,
        gradient_checkpointing: bool = False,
        shard: bool = False,
        fsdp: FSDPConfig | dict | None = None,
    ):
        """``dtype``: the weights of a scoring-only model; a ``trainable`` one
        (reward-model training) holds ``precision``'s train dtype and computes
        under its autocast; ``shard``: a rank of the training stage's group."""
        self.device = setup_actor(device, torch_threads, seed)
        self.model = None
        self.tokenizer = None
        self.precision = get_precision(precision)
        self._init_sharding(shard and trainable, fsdp)
        if model is not None:
            self.model = load_reward_model(model, dtype=self.precision.train_dtype if trainable else dtype,
                                           device="cpu" if self.fsdp else self.device, trainable=trainable,
                                           gradient_checkpointing=gradient_checkpointing and trainable)
            self.tokenizer = load_tokenizer(model)
            self.scorer = Scorer(self.model)
            self.fsdp_root = self.scorer
        self.rules = [load_rule(r) for r in (rules or [])]
        self.rule_weight, self.model_weight = rule_weight, model_weight
        if self.model is None and not self.rules:
            raise ValueError("a reward needs a model, rule functions, or both")

    @torch.no_grad()
    def score(self, exp: Experience) -> torch.Tensor:
        """Scalar score per row [N] (CPU, fp32)."""
        total = torch.zeros(len(exp))
        if self.model is not None:
            self.model.eval()
            e = exp.to(self.device)
            total += self.model_weight * self.scorer(e.sequences, e.attention_mask).float().cpu()
        if self.rules:
            meta = exp.meta or [{}] * len(exp)
            rule = torch.tensor([
                sum(float(fn(p, r, m)) for fn in self.rules)
                for p, r, m in zip(exp.prompt_text, exp.response_text, meta)
            ])
            total += self.rule_weight * rule
        return total

    @torch.no_grad()
    def score_batch(self, batch: dict) -> torch.Tensor:
        """Model score for a collated batch (evaluation, pairwise accuracy)."""
        b = to_device(batch, self.device)
        return self.scorer(b["input_ids"], b["attention_mask"]).float().cpu()

    # -- training (Bradley-Terry) ----------------------------------------------
    def begin_training(self, optim, total_steps: int) -> None:
        self.optim = optim_config(optim)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.opt, self.sched = build_optimizer(self.model, self.optim, total_steps)

    def train_step(self, batch: dict, total: int | None = None) -> dict:
        """One BT step on a ``collate_pairwise`` batch (chosen rows, then rejected rows).

        ``total``: the whole batch's pairs when the stage split it over the
        group's ranks; each rank's pair mean is weighted by its share."""
        self.model.train()
        b = to_device(batch, self.device)
        with self.precision.compute(self.device, b["input_ids"].shape[1]):
            scores = self.scorer(b["input_ids"], b["attention_mask"]).float()
        n = scores.shape[0] // 2
        loss, acc = bradley_terry_loss(scores[:n], scores[n:])
        share = n / total if total else 1.0
        (share * self.grad_scale * loss).backward()
        stats = self.sum_stats({"rm/accuracy": float(acc) * share, "rm/loss": loss.item() * share,
                                "rm/margin": float((scores[:n] - scores[n:]).detach().mean()) * share})
        stats["rm/grad_norm"] = self.clip_and_step(self.opt, self.sched, self.optim.grad_clip)
        return stats

    def end_training(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.opt = self.sched = None

    def save_pretrained(self, path: str) -> str:
        """A Hugging Face folder (sharded: gathered tensor by tensor, rank 0 writes)."""
        if self.sharded:
            return export_gathered(self.model, self.tokenizer, path, self.rank)
        save_checkpoint(self.model, self.tokenizer, path)
        return path

    def ping(self) -> bool:
        return True
