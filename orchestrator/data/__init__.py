"""Data loading for SFT, pairwise / point-wise preferences and PPO prompts.

Files: JSONL (``.jsonl``, ``.json-lines``, ``.ndjson``, optionally ``.gz``),
``.json`` (lines or an array) and Parquet, or a directory / glob of them.
Records (TRL / OpenRLHF shapes):

* SFT: ``{"prompt", "response" | "completion"}`` or ``{"messages": [...]}``
* pairwise: ``{"prompt", "chosen", "rejected"}`` (strings or message lists),
  or ``{"chosen", "rejected"}`` as full conversations (shared prefix = prompt)
* point-wise: SFT record + ``"label"`` (bool or number in [0, 1])
* prompts: ``{"prompt": str | messages, ...metadata}``

Prompts are rendered with the tokenizer's chat template (plain-string prompts
become one user message); the response is the assistant text plus the
end-of-turn token; the loss mask covers response tokens only (every assistant
turn of a multi-turn conversation by default, ``assistant_loss="last"`` for
the final one only). Every record is validated up front; a bad one raises
:class:`DataError` naming file, line and field. See the module docstrings of
``records``, ``schema``, ``tokenize``, ``datasets``, ``collate`` and
``curriculum`` (the DPO data curriculum, easy to hard).
"""

from hbat.orchestrator.data.collate import (
    batches,
    collate_pairwise,
    collate_pointwise,
    collate_prompts,
    collate_sft,
    pad_sequences,
)
from hbat.orchestrator.data.curriculum import CURRICULA, curriculum_batch, curriculum_order
from hbat.orchestrator.data.datasets import (
    DATASET_KINDS,
    PairwiseDataset,
    PointwiseDataset,
    PromptDataset,
    SFTDataset,
    TokenizedDataset,
    load_dataset,
)
from hbat.orchestrator.data.errors import DataError
from hbat.orchestrator.data.records import expand_paths, iter_records, read_records
from hbat.orchestrator.data.tokenize import Renderer, encode_pieces, fit_lengths, fit_prompt

__all__ = [
    "CURRICULA",
    "DATASET_KINDS",
    "DataError",
    "PairwiseDataset",
    "PointwiseDataset",
    "PromptDataset",
    "Renderer",
    "SFTDataset",
    "TokenizedDataset",
    "batches",
    "collate_pairwise",
    "collate_pointwise",
    "collate_prompts",
    "collate_sft",
    "curriculum_batch",
    "curriculum_order",
    "encode_pieces",
    "expand_paths",
    "fit_lengths",
    "fit_prompt",
    "iter_records",
    "load_dataset",
    "pad_sequences",
    "read_records",
]
