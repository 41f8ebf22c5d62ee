"""Every data file a run reads, tokenised and validated once, up front.

A bad record fails here -- before Ray starts -- with its file, line and
field. Phases read shards of these datasets; batches are drawn by
:func:`batch_indices`, deterministic in (seed, phase, step), so a resumed
run sees exactly the batches the killed one would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hbat.models import load_tokenizer
from hbat.orchestrator.config import Config
from hbat.orchestrator.data import PairwiseDataset, PointwiseDataset, PromptDataset, SFTDataset

#: data.<key> -> the dataset class that reads it
DATASETS = {
    "sft": SFTDataset,
    "preference": PairwiseDataset,
    "pointwise": PointwiseDataset,
    "prompts": PromptDataset,
    "eval_sft": SFTDataset,
    "eval_prompts": PromptDataset,
}


@dataclass
class RunData:
    tokenizer: object
    sets: dict  # data key -> dataset, for every data.* file the config names

    @classmethod
    def load(cls, cfg: Config) -> "RunData":
        d = cfg.data
        tokenizer = load_tokenizer(cfg.model.policy)
        opts = dict(max_prompt_len=d.max_prompt_len, max_len=d.max_len, chat_template=d.chat_template,
                    on_overlong=d.on_overlong, limit=d.limit)
        sets = {key: ds.from_file(getattr(d, key), tokenizer, **opts) for key, ds in DATASETS.items()
                if getattr(d, key)}
        return cls(tokenizer, sets)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def get(self, key: str):
        """The dataset of ``data.<key>``, or None when the config names no file."""
        return self.sets.get(key)


def batch_indices(seed: int, n: int, bs: int, phase_index: int, step: int) -> list[int]:
    """``bs`` indices into a shard of ``n`` records for (phase, step): epochs of
    seeded permutations, so a resumed run draws the same batches."""
    epoch, offset = divmod(step * bs, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + phase_index * 31 + epoch))
    idx = perm[offset:offset + bs].tolist()
    if len(idx) < bs and n >= bs:
        perm2 = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + phase_index * 31 + epoch + 1))
        idx += perm2[: bs - len(idx)].tolist()
    return idx
