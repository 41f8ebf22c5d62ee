"""Reward-model score and reward-model-judged win rate.

The reward model may come from another family than the policy, so the
(prompt, response) text is rendered again with the reward model's own
tokenizer and chat template, exactly as reward-model training rendered its
pairs (response + end-of-turn token; an over-long input keeps its last
tokens, where the score is read). Scores come from a ``RewardWorker`` actor.

Win rate against a baseline: per prompt 1 if the policy's response scores
higher than the baseline's, 0 if lower, 0.5 on a tie (identical responses
always tie).
"""

from __future__ import annotations

import numpy as np
import ray

from hbat.actors.reward import RewardWorker
from hbat.models import load_tokenizer
from hbat.orchestrator.data import collate_sft
from hbat.orchestrator.data.tokenize import Renderer, encode_pieces
from hbat.orchestrator.evaluation.evalset import EvalExample
from hbat.orchestrator.evaluation.generation import torch_threads
from hbat.orchestrator.evaluation.settings import EvalConfig
from hbat.orchestrator.evaluation.stats import Metric
from hbat.orchestrator.evaluation.suites.base import Context, Suite

TIE_EPS = 1e-6


class RewardScorer:
    """Driver-side handle: renders with the reward tokenizer, scores on the actor."""

    def __init__(self, path: str, cfg: EvalConfig):
        self.path, self.cfg = path, cfg
        self.tokenizer = load_tokenizer(path)
        self.renderer = Renderer(self.tokenizer, chat_template=cfg.chat_template)
        res = cfg.resources.reward
        self.actor = ray.remote(RewardWorker).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus).remote(
            path, dtype=cfg.dtype, torch_threads=torch_threads(cfg) if res.num_gpus == 0 else None)
        self.max_len = cfg.max_prompt_len + cfg.max_new_tokens + 8

    def score(self, examples: list[EvalExample], responses: list[str]) -> list[float]:
        pieces = [self.renderer.pair_pieces(ex.prompt, resp) for ex, resp in zip(examples, responses)]
        encoded = [(ids[-self.max_len:], mask[-self.max_len:]) for ids, mask in encode_pieces(self.tokenizer, pieces)]
        pad = self.tokenizer.pad_token_id
        refs = []
        for i in range(0, len(encoded), self.cfg.batch_size):
            chunk = [{"input_ids": ids, "loss_mask": m} for ids, m in encoded[i:i + self.cfg.batch_size]]
            refs.append(self.actor.score_batch.remote(collate_sft(chunk, pad)))
        return [float(x) for t in ray.get(refs) for x in t.tolist()]

    def close(self) -> None:
        ray.kill(self.actor)


def scorer(ctx: Context) -> RewardScorer:
    if "reward" not in ctx.services:  # normally started with the other eval actors (EvalActors)
        ctx.services["reward"] = ctx.owned["reward"] = RewardScorer(ctx.cfg.reward_model, ctx.cfg)
    return ctx.services["reward"]


def policy_scores(ctx: Context) -> list[float]:
    if "reward_scores" not in ctx.extra:
        ctx.extra["reward_scores"] = scorer(ctx).score(ctx.examples, ctx.responses)
    return ctx.extra["reward_scores"]


def win_values(a: list[float], b: list[float], eps: float = TIE_EPS) -> list[float]:
    return [0.5 if abs(x - y) <= eps else float(x > y) for x, y in zip(a, b)]


def distribution(values: list[float], bins: int = 10) -> dict:
    v = np.asarray(values, dtype=np.float64)
    counts, edges = np.histogram(v, bins=bins)
    q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "quantiles": dict(zip(("p10", "p25", "p50", "p75", "p90"), map(float, q))),
            "histogram": {"counts": counts.tolist(), "edges": [float(e) for e in edges]}}


class RewardSuite(Suite):
    name = "reward"
    description = "reward-model score of each response (mean and distribution)"

    def missing(self, ctx: Context) -> str | None:
        return None if ctx.cfg.reward_model else "no reward_model given"

    def run(self, ctx: Context) -> dict[str, Metric]:
        scores = policy_scores(ctx)
        ctx.extra["reward_distribution"] = distribution(scores)
        return {"reward/score": Metric(scores)}


class WinrateSuite(Suite):
    name = "winrate"
    description = "win rate against the baseline's responses, judged by the reward model (ties 0.5)"

    def missing(self, ctx: Context) -> str | None:
        if not ctx.cfg.reward_model:
            return "no reward_model given"
        return None if ctx.baseline is not None else "no baseline given"

    def run(self, ctx: Context) -> dict[str, Metric]:
        mine = policy_scores(ctx)
        theirs = scorer(ctx).score(ctx.examples, ctx.baseline)
        ctx.extra["baseline_reward_scores"] = theirs
        return {"winrate/rm": Metric(win_values(mine, theirs)),
                "reward/margin_vs_baseline": Metric([x - y for x, y in zip(mine, theirs)])}
