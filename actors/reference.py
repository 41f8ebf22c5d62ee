"""The frozen reference model: log-probs for the KL penalty (PPO) and the
implicit reward of the DPO family. Never trained, so it can sit on a shared
device at low priority.

It starts as the initial model; ``reference.refresh`` can reset it to the
policy of a later moment (e.g. the SFT result, as InstructGPT does) through
:meth:`load_exported`, and a run checkpoint keeps such a reference with
:meth:`save_weights` / :meth:`load_weights_file`."""

from __future__ import annotations

import torch

from hbat.actors.experience import Experience
from hbat.actors.training import RunFolderProbe, setup_actor, to_device
from hbat.models import load_causal_lm, response_token_logprobs
from hbat.objectives import masked_sum


class ReferenceWorker(RunFolderProbe):
    def __init__(self, model: str, *, dtype: str = "float32", device: str = "auto", torch_threads: int | None = None,
                 packing: str = "auto"):
        self.device = setup_actor(device, torch_threads)
        self.packing = packing  # model.packing (models/packing.py)
        self.model = load_causal_lm(model, dtype=dtype, device=self.device)

        self.version: int | None = None  # policy weight version loaded by a refresh (None: initial model)

    @torch.no_grad()
    def logprobs(self, exp: Experience) -> torch.Tensor:
        """Per-token reference log-probs [N, T-1] (CPU, fp32) of the sampling
        distribution (logits / the rollout's temperature, like the policy's);
        response positions only (zeros over the prompt columns)."""
        e = exp.to(self.device)
        return response_token_logprobs(self.model, e.sequences, e.attention_mask, e.action_mask,
                                       e.temperature, packing=self.packing)[0].float().cpu()

    @torch.no_grad()
    def load_exported(self, packed: tuple[int, dict[str, torch.Tensor]]) -> int:
        """Become the policy: load ``PolicyWorker.export_weights()``'s ``(version, state)``."""
        version, state = packed
        self._load(state)
        self.version = int(version)
        return self.version

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        tied = {n for n in missing if n == "lm_head.weight" and getattr(self.model.config, "tie_word_embeddings", False)}
        if set(missing) - tied or unexpected:
            raise ValueError(f"reference refresh: weights do not match the reference model "
                             f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")

    def save_weights(self, path: str) -> str:
        """The current reference weights as one safetensors file (run checkpoints)."""
        from safetensors.torch import save_model

        from hbat.models.atomic import atomic_file

        with atomic_file(path) as tmp:
            save_model(self.model, tmp, metadata={"version": str(self.version)})
        return path

    def load_weights_file(self, path: str) -> int | None:
        from safetensors import safe_open
        from safetensors.torch import load_model

        load_model(self.model, path, strict=False)
        with safe_open(path, "pt") as fh:
            v = (fh.metadata() or {}).get("version")
        self.version = None if v in (None, "None") else int(v)
        return self.version

    @torch.no_grad()
    def sequence_logps(self, batch: dict) -> torch.Tensor:
        """Summed response log-probs [B] for a collated SFT/preference batch."""
        b = to_device(batch, self.device)
        m = b["loss_mask"][:, 1:]
        return masked_sum(response_token_logprobs(self.model, b["input_ids"], b["attention_mask"], m,
                                                  packing=self.packing)[0], m,
                          dim=1).float().cpu()

    def ping(self) -> bool:
        return True
