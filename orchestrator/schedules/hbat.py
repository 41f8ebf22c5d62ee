"""Hybrid Alignment Training (arXiv 2406.15178, Algorithm 1).

Instruction data D_I and preference data D_P are split into T shards. In round
t the policy first learns shard t of D_I while a modified-EWC penalty holds it
near where the previous preference phase left it (weighted by how far that
phase moved each tensor); then it learns shard t of D_P while the penalty holds
it near where this round's instruction phase left it. Round 1's instruction
phase has no penalty: there is no preference phase before it.
"""

from __future__ import annotations

from hbat.orchestrator.schedules.phase import Phase


def hbat(cfg, use_ewc: bool = True) -> list[Phase]:
    T = cfg.schedule.rounds
    ewc = use_ewc and cfg.ewc.method != "none"
    phases: list[Phase] = []
    for t in range(T):
        phases.append(Phase("sft", t, T, anchor="preference" if ewc and t > 0 else None, record_anchor=ewc))
        phases.append(Phase("preference", t, T, anchor="sft" if ewc else None, record_anchor=ewc))
    return phases
