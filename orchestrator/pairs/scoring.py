"""Scores for both sides of a contrast pair: rule functions and/or a reward model.

The strategy, not the score, decides which side is chosen (PopAlign's pairs
need no labeller). Scores are *provenance*: they let a user filter pairs the
scorer disagrees with, and they give the DPO curriculum its ``score_gap``
(easy = a large gap). The reward model may be of another family than the
generators, so each (prompt, response) is rendered again with its own
tokenizer, as reward-model training renders its pairs.
"""

from __future__ import annotations

import ray

from hbat.actors.reward import RewardWorker, load_rule
from hbat.models import load_tokenizer
from hbat.orchestrator.data import collate_sft
from hbat.orchestrator.data.tokenize import Renderer, encode_pieces


class PairScorer:
    """``model_weight * RM(prompt, response) + rule_weight * sum(rule(prompt_text, response, meta))``."""

    def __init__(self, cfg, *, num_cpus: float = 0.5, torch_threads: int = 2, max_len: int = 512):
        self.cfg = cfg
        self.rules = [load_rule(r) for r in cfg.rules]
        self.actor = None
        if cfg.reward_model:
            self.tokenizer = load_tokenizer(cfg.reward_model)
            self.renderer = Renderer(self.tokenizer)
            self.actor = ray.remote(RewardWorker).options(num_cpus=num_cpus).remote(
                cfg.reward_model, torch_threads=torch_threads)
            self.max_len = max_len

    def score(self, prompts: list, texts: list[str], responses: list[str], metas: list[dict]) -> list[float]:
        """``prompts``: as given (string or messages, for the RM); ``texts``: their user text (for rules)."""
        total = [0.0] * len(responses)
        if self.actor is not None:
            pieces = [self.renderer.pair_pieces(p, r) for p, r in zip(prompts, responses)]
            rows = [{"input_ids": ids[-self.max_len:], "loss_mask": m[-self.max_len:]}
                    for ids, m in encode_pieces(self.tokenizer, pieces)]
            scores = ray.get(self.actor.score_batch.remote(collate_sft(rows, self.tokenizer.pad_token_id))).tolist()
            total = [t + self.cfg.model_weight * float(s) for t, s in zip(total, scores)]
        if self.rules:
            total = [t + self.cfg.rule_weight * sum(float(fn(p, r, m)) for fn in self.rules)
                     for t, p, r, m in zip(total, texts, responses, metas)]
        return total

    def close(self) -> None:
        if self.actor is not None:
            ray.kill(self.actor)
