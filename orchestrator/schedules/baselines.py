"""The baselines the HBAT paper compares against, on the same shards and step
budget as ``hbat`` so a comparison changes only the schedule."""

from __future__ import annotations

from hbat.orchestrator.schedules.hbat import hbat
from hbat.orchestrator.schedules.phase import Phase


def alternating(cfg) -> list[Phase]:
    """HBAT without EWC: the ablation that isolates the penalty's effect."""
    return hbat(cfg, use_ewc=False)


def two_stage(cfg) -> list[Phase]:
    """All instruction shards, then all preference shards (SFT -> PPO / DPO)."""
    T = cfg.schedule.rounds
    return [Phase("sft", t, T) for t in range(T)] + [Phase("preference", t, T) for t in range(T)]


def ptx(cfg) -> list[Phase]:
    """InstructGPT's PPO-ptx (or DPO + SFT): SFT stage, then preference phases
    with ``mix_coef * L_SFT`` on the instruction data mixed into every step."""
    T, c = cfg.schedule.rounds, cfg.schedule.mix_coef
    return [Phase("sft", t, T) for t in range(T)] + [Phase("preference", t, T, sft_mix=c) for t in range(T)]


def joint(cfg) -> list[Phase]:
    """One multi-objective run from the start: every step optimises
    L_pref + mix_coef * L_SFT, no separate SFT stage. Each round gets the same
    optimizer steps and examples of each dataset as an hbat round (see
    ``Phase.joint_budget``), so the comparison changes only how the objectives
    are combined."""
    T, c = cfg.schedule.rounds, cfg.schedule.mix_coef
    return [Phase("preference", t, T, sft_mix=c, joint_budget=True) for t in range(T)]


def sft_only(cfg) -> list[Phase]:
    """Instruction tuning alone: the lower reference point for preference metrics."""
    T = cfg.schedule.rounds
    return [Phase("sft", t, T) for t in range(T)]
