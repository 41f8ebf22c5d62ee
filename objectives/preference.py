"""Pairwise preference losses: DPO (sigmoid), conservative DPO, IPO, SLiC-HF.

Every function takes four ``[B]`` tensors of *summed* response log-probs
(see :func:`hbat.objectives.logprobs.sequence_logprobs`):
``pc = log pi(y_c|x)``, ``pr = log pi(y_r|x)`` under the policy and
``rc``, ``rr`` the same under the frozen reference, and returns
``(loss, stats)`` where ``loss`` is a scalar (mean over pairs) and ``stats``
holds detached scalars:

* ``chosen_reward``  = mean ``beta * (pc - rc)`` (DPO's implicit reward),
* ``rejected_reward`` = mean ``beta * (pr - rr)``,
* ``reward_accuracy`` = fraction of pairs with chosen reward > rejected reward,
* ``margin`` = mean ``beta * h`` with ``h = (pc - rc) - (pr - rr)``.

Callers who want length-normalised log-probs (TRL's IPO does) pass
``sequence_logprobs(..., average=True)``: the losses do not care how the
log-probs were reduced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dpo_loss", "ipo_loss", "slic_loss", "implicit_reward_stats"]


def implicit_reward_stats(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float) -> dict[str, Tensor]:
    """Detached monitoring stats shared by the pairwise losses (see module docstring).

    Formula: ``r_c = beta (pc - rc)``, ``r_r = beta (pr - rr)``;
    returns the batch means of ``r_c``, ``r_r``, ``1[r_c > r_r]`` and ``r_c - r_r``.

    Why: these are the numbers TRL logs as ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/accuracies`` and ``rewards/margins``, so
    dashboards compare one to one.
    """
    with torch.no_grad():
        chosen = beta * (pc - rc)
        rejected = beta * (pr - rr)
        return {
            "chosen_reward": chosen.float().mean(),
            "rejected_reward": rejected.float().mean(),
            "reward_accuracy": (chosen > rejected).float().mean(),
            "margin": (chosen - rejected).float().mean(),
        }


def _log_ratio_margin(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
    return (pc - rc) - (pr - rr)


def dpo_loss(
    pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float = 0.1, label_smoothing: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sigmoid DPO, optionally conservative (label-smoothed).

    Formula: ``h = (pc - rc) - (pr - rr)``;
    ``L = mean_b[ -(1 - eps) * logsigmoid(beta h) - eps * logsigmoid(-beta h) ]``
    with ``eps = label_smoothing`` (``eps = 0``: plain DPO).

    Papers: Rafailov et al. 2023, "Direct Preference Optimization"; conservative
    DPO (cDPO): E. Mitchell, "A note on DPO with noisy preferences" (2023).

    Why: DPO is the Bradley-Terry likelihood of the preferences under the
    implicit reward ``beta log(pi/pi_ref)``, i.e. RLHF's KL-regularised optimum
    without a reward model or sampling. cDPO assumes each label is flipped with
    probability ``eps``; the loss then stops pushing once
    ``sigmoid(beta h) = 1 - eps`` instead of driving ``h`` to infinity.
    Matches TRL's ``loss_type="sigmoid"`` with ``label_smoothing`` exactly:
    same sign of ``h``, same weights, mean over pairs.
    """
    h = _log_ratio_margin(pc, pr, rc, rr)
    loss = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return loss.mean(), implicit_reward_stats(pc, pr, rc, rr, beta)


def ipo_loss(
    pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float = 0.1
) -> tuple[Tensor, dict[str, Tensor]]:
    """Identity Preference Optimisation.

    Formula: ``L = mean_b (h - 1/(2 beta))^2`` with ``h = (pc - rc) - (pr - rr)``.

    Paper: Azar et al. 2023, "A General Theoretical Paradigm to Understand
    Learning from Human Preferences" (IPO; ``beta`` is the paper's ``tau``).

    Why: DPO's sigmoid saturates, so with deterministic preferences it keeps
    pushing ``h`` to infinity and ignores the KL regulariser; IPO regresses
    ``h`` to a finite target ``1/(2 beta)``, which keeps the policy close to
    the reference however clean the labels are. Same formula and sign as TRL's
    ``loss_type="ipo"``; TRL feeds it *length-averaged* log-probs -- here the
    caller chooses by passing summed or averaged log-probs.
    """
    h = _log_ratio_margin(pc, pr, rc, rr)
    loss = (h - 1.0 / (2.0 * beta)) ** 2
    return loss.mean(), implicit_reward_stats(pc, pr, rc, rr, beta)


def slic_loss(
    pc: Tensor,
    pr: Tensor,
    rc: Tensor,
    rr: Tensor,
    beta: float = 1.0,
    delta: float = 1.0,
    reg_weight: float = 0.1,
    chosen_nll: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SLiC-HF: rank-calibration hinge loss plus a likelihood regulariser.

    Formula: ``L = mean_b[ max(0, delta - beta (pc - pr)) + reg_weight * nll ]``
    where ``nll = chosen_nll`` if given (e.g. NLL of an SFT target, or a
    length-normalised NLL) else ``-pc`` (NLL of the chosen response).
    ``beta = 1`` is the paper's loss; other values rescale the log-likelihood
    gap (equivalently, the margin becomes ``delta / beta``).

    Paper: Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with
    Human Feedback" (calibration loss with margin ``delta`` and cross-entropy
    regulariser weight ``lambda``). ``reg_weight = 0.1`` is our default, not a
    value taken from the paper; tune it together with whether ``chosen_nll``
    is summed or per-token.

    Why: the hinge only asks the chosen answer to be ``delta`` nats more
    likely than the rejected one and then stops; the regulariser keeps the
    model from drifting away from good text while it satisfies the ranking --
    SLiC's replacement for a KL term. The reference log-probs ``rc``/``rr`` are
    accepted only so every pairwise loss has the same signature; they are not
    used in the loss (they only feed the monitoring stats, computed with
    ``beta = 1``: ``chosen_reward = mean(pc - rc)``; extra stats ``hinge``,
    ``reg_nll`` and ``logp_accuracy = mean 1[pc > pr]``). Note TRL's
    ``loss_type="hinge"`` is a different loss (``relu(1 - beta h)`` on the
    reference-normalised margin ``h``); this function follows the paper.
    """
    hinge = torch.clamp(delta - beta * (pc - pr), min=0.0)
    nll = -pc if chosen_nll is None else chosen_nll
    loss = (hinge + reg_weight * nll).mean()
    stats = implicit_reward_stats(pc, pr, rc, rr, 1.0)
    with torch.no_grad():
        stats["hinge"] = hinge.float().mean()
        stats["reg_nll"] = nll.float().mean()
        stats["logp_accuracy"] = (pc > pr).float().mean()
    return loss, stats
