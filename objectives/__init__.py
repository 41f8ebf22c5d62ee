"""Pure-torch objectives for hbat: losses, estimators and the EWC penalty.

No Ray in here (docs/architecture.md §1): everything takes and returns tensors, so the
same code runs inside any actor, in tests and in notebooks. One idea per
module:

* :mod:`.masked`       -- masked sum / mean / var / whiten
* :mod:`.logprobs`     -- shifted per-token log-probs, sequence log-probs, entropy
* :mod:`.sft`          -- instruction (SFT) loss
* :mod:`.reward_model` -- Bradley-Terry reward-model loss
* :mod:`.kl`           -- k1/k2/k3 KL estimators
* :mod:`.ppo`          -- KL-shaped rewards, GAE, clipped PPO losses, GRPO/RLOO baselines
* :mod:`.preference`   -- DPO, cDPO, IPO, SLiC-HF (pairwise)
* :mod:`.pointwise`    -- point-wise DPO, ULMA
* :mod:`.registry`     -- preference losses by name
* :mod:`.ewc`          -- HBAT modified EWC and original (Fisher) EWC
"""

from .ewc import (
    AUTHORS_CODE_SCALE,
    EWCAnchor,
    fisher_importance,
    movement_importance,
    normalize_importance,
    trainable_state,
)
from .kl import kl_estimate
from .logprobs import entropy_from_logits, flat_token_logprobs, sequence_logprobs, tempered_logits, token_logprobs
from .masked import masked_mean, masked_sum, masked_var, masked_whiten
from .pointwise import pointwise_dpo_loss, ulma_loss
from .ppo import (
    gae_advantages,
    group_relative_advantages,
    kl_penalized_rewards,
    normalize_scores,
    ppo_policy_loss,
    ppo_value_loss,
)
from .preference import dpo_loss, implicit_reward_stats, ipo_loss, slic_loss
from .registry import PREFERENCE_LOSSES, LossSpec, get_preference_loss
from .reward_model import bradley_terry_loss
from .sft import sft_loss

__all__ = [
    "AUTHORS_CODE_SCALE",
    "EWCAnchor",
    "LossSpec",
    "PREFERENCE_LOSSES",
    "bradley_terry_loss",
    "dpo_loss",
    "entropy_from_logits",
    "flat_token_logprobs",
    "fisher_importance",
    "gae_advantages",
    "get_preference_loss",
    "group_relative_advantages",
    "implicit_reward_stats",
    "ipo_loss",
    "kl_estimate",
    "kl_penalized_rewards",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "movement_importance",
    "normalize_importance",
    "normalize_scores",
    "pointwise_dpo_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "sequence_logprobs",
    "sft_loss",
    "slic_loss",
    "tempered_logits",
    "token_logprobs",
    "trainable_state",
    "ulma_loss",
]
