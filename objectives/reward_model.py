"""Bradley-Terry pairwise loss for reward-model training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bradley_terry_loss"]


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Pairwise Bradley-Terry loss and accuracy: ``[B], [B] -> (scalar, scalar)``.

    Formula: ``loss = -mean_b logsigmoid(r_c[b] - r_r[b] - margin[b])``
    (``margin = 0`` if None); ``accuracy = mean_b 1[r_c[b] > r_r[b]]``
    (a detached float; ties count as wrong).

    Paper: Bradley & Terry (1952) preference model, used for RLHF reward
    models by Stiennon et al. 2020 / Ouyang et al. 2022; the optional margin
    is Llama-2's (Touvron et al. 2023) way of asking a larger reward gap for
    pairs rated as clearly different.

    Why: P(chosen > rejected) = sigmoid(r_c - r_r) under Bradley-Terry, so
    this is the negative log-likelihood of the human labels. Matches TRL's
    ``RewardTrainer`` exactly: ``-logsigmoid(rc - rr - margin).mean()``, margin
    subtracted, mean over pairs.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"shape mismatch: {tuple(chosen_rewards.shape)} vs {tuple(rejected_rewards.shape)}")
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    with torch.no_grad():
        accuracy = (chosen_rewards > rejected_rewards).float().mean()
    return loss, accuracy
