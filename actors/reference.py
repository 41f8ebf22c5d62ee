"""The frozen reference model: log-probs for the KL penalty (PPO) and the
implicit reward of the DPO family. Never trained, so it can sit on a shared
device at low priority."""

from __future__ import annotations

import torch

from hbat.actors.experience import Experience
from hbat.actors.training import quiet_transformers, to_device
from hbat.models import load_causal_lm, resolve_device
from hbat.objectives import sequence_logprobs, token_logprobs


class ReferenceWorker:
    def __init__(self, model: str, *, dtype: str = "float32", device: str = "auto", torch_threads: int | None = None):
        quiet_transformers()
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = resolve_device(device)
        self.model = load_causal_lm(model, dtype=dtype, device=self.device)

    @torch.no_grad()
    def logprobs(self, exp: Experience) -> torch.Tensor:
        """Per-token reference log-probs [N, T-1] (CPU, fp32)."""
        e = exp.to(self.device)
        logits = self.model(input_ids=e.sequences, attention_mask=e.attention_mask).logits
        return token_logprobs(logits, e.sequences).float().cpu()

    @torch.no_grad()
    def sequence_logps(self, batch: dict) -> torch.Tensor:
        """Summed response log-probs [B] for a collated SFT/preference batch."""
        b = to_device(batch, self.device)
        logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return sequence_logprobs(logits, b["input_ids"], b["loss_mask"]).float().cpu()

    def ping(self) -> bool:
        return True
