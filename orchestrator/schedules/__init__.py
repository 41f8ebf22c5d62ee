"""Phase schedules: each is a function ``plan(cfg) -> list[Phase]``.

A schedule is data, not a loop: the driver executes the list in order and
checkpoints after each phase, so resuming means "continue at phase i, step k"
and tests can assert the exact order and shard use.
"""

from dataclasses import replace

from hbat.orchestrator.schedules.baselines import alternating, joint, ptx, sft_only, two_stage
from hbat.orchestrator.schedules.hbat import hbat
from hbat.orchestrator.schedules.lifetimes import reference_used_before_refresh, unused_anchors
from hbat.orchestrator.schedules.phase import Phase

#: every schedule by name: the one list ``schedule.name``, ``hbat compare``
#: methods and the CLI help read (baselines first, HBAT last, as tables show them)
SCHEDULES = {
    "sft_only": sft_only,
    "two_stage": two_stage,
    "ptx": ptx,
    "joint": joint,
    "alternating": alternating,
    "hbat": hbat,
}

#: ``reference.refresh: auto`` per schedule: the choice the method's own
#: papers / code make (see ``ReferenceConfig``).
DEFAULT_REFERENCE_REFRESH = {
    "hbat": "each_round",
    "alternating": "each_round",
    "two_stage": "after_sft_stage",
    "ptx": "after_sft_stage",
    "joint": "never",
    "sft_only": "never",
}


def reference_refresh(cfg) -> str:
    mode = cfg.reference.refresh
    return DEFAULT_REFERENCE_REFRESH[cfg.schedule.name] if mode == "auto" else mode


def build_plan(cfg) -> list[Phase]:
    """The schedule's phases, preceded by the optional SFT warm-up stage, with
    the reference refreshes of ``reference.refresh`` marked on them."""
    plan = SCHEDULES[cfg.schedule.name](cfg)
    if cfg.schedule.sft_warmup_steps:
        plan = [Phase("sft", 0, 1, steps=cfg.schedule.sft_warmup_steps)] + plan
    mode = reference_refresh(cfg)
    if mode != "never":
        # a preference phase right after an instruction phase starts from an
        # SFT result: each_round refreshes at every such boundary,
        # after_sft_stage only at the first one
        marked = []
        for i, p in enumerate(plan):
            follows_sft = p.kind == "preference" and i > 0 and plan[i - 1].kind == "sft"
            if follows_sft and (mode == "each_round" or not any(q.refresh_reference for q in marked)):
                p = replace(p, refresh_reference=True)
            marked.append(p)
        plan = marked
    return plan


__all__ = ["DEFAULT_REFERENCE_REFRESH", "Phase", "SCHEDULES", "build_plan", "reference_refresh",
           "reference_used_before_refresh", "unused_anchors"]
