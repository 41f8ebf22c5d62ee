"""Phase schedules: each is a function ``plan(cfg) -> list[Phase]``.

A schedule is data, not a loop: the driver executes the list in order and
checkpoints after each phase, so resuming means "continue at phase i, step k"
and tests can assert the exact order and shard use.
"""

from hbat.orchestrator.schedules.baselines import alternating, joint, ptx, sft_only, two_stage
from hbat.orchestrator.schedules.hbat import hbat
from hbat.orchestrator.schedules.phase import Phase

SCHEDULES = {
    "hbat": hbat,
    "alternating": alternating,
    "two_stage": two_stage,
    "ptx": ptx,
    "joint": joint,
    "sft_only": sft_only,
}



def build_plan(cfg) -> list[Phase]:
    """The schedule's phases, preceded by the optional SFT warm-up stage."""
    plan = SCHEDULES[cfg.schedule.name](cfg)
    if cfg.schedule.sft_warmup_steps:
        plan = [Phase("sft", 0, 1, steps=cfg.schedule.sft_warmup_steps)] + plan
    return plan


__all__ = ["Phase", "SCHEDULES", "build_plan"]
