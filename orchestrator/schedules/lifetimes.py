"""What later phases of a plan still need from earlier ones.

Read from the plan alone (no actor state), so the driver can drop what no
later phase uses -- anchor tensors, a refreshed reference -- from memory and
from checkpoints, and a resumed run makes the same decisions.
"""

from __future__ import annotations

from hbat.orchestrator.schedules.phase import Phase


def unused_anchors(plan: list[Phase], index: int) -> list[str]:
    """Anchor kinds recorded by phase ``index`` or earlier that no later phase
    applies before a phase of that kind records it anew: their tensors (a copy
    of the weights each) can go. HBAT's sft anchor, say, is applied by the
    next preference phase and dead once the following sft phase begins."""
    recorded = {p.kind for p in plan[: index + 1] if p.record_anchor}
    dead = []
    for kind in sorted(recorded):
        for q in plan[index + 1:]:
            if q.anchor == kind:
                break
            if q.kind == kind and q.record_anchor:
                dead.append(kind)
                break
        else:
            dead.append(kind)
    return dead


def reference_used_before_refresh(plan: list[Phase], phase_index: int, step_in_phase: int) -> bool:
    """Whether a run resumed at (``phase_index``, ``step_in_phase``) uses the
    reference's current weights: a preference phase runs before any refresh.
    A phase refreshes the reference only at its step 0."""
    for i, p in enumerate(plan[phase_index:]):
        if p.refresh_reference and (i > 0 or step_in_phase == 0):
            return False
        if p.kind == "preference":
            return True
    return False
