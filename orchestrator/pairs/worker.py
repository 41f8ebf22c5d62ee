"""The rollout worker ``build-pairs`` runs as a Ray actor: the project's
``RolloutWorker`` plus the two things pair building needs to know about it.

``num_parameters`` lets the builder verify the parameter-count contrast
against the models actually loaded (the config's word is not enough), and
``threads`` sets the CPU threads before the model loads.
"""

from __future__ import annotations

import torch

from hbat.actors.rollout import RolloutWorker


class PairRolloutWorker(RolloutWorker):
    def __init__(self, model: str, backend: str = "auto", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        super().__init__(model, backend=backend)

    def num_parameters(self) -> int:
        model = getattr(self.backend, "model", None)
        if model is None or not hasattr(model, "parameters"):  # vLLM holds the weights elsewhere
            return -1
        return int(sum(p.numel() for p in model.parameters()))
