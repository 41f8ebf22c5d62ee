"""One phase of a schedule."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal


@dataclass(frozen=True)
class Phase:
    """``kind`` sft: instruction data; preference: PPO/DPO data.

    ``shard`` of ``num_shards`` selects the data. ``anchor`` names the phase
    kind whose recorded EWC anchor penalises this phase (None: no penalty).
    ``record_anchor`` asks the policy to snapshot this phase's end weights and
    movement as the anchor for later phases. ``sft_mix`` adds ``coef * L_SFT``
    on the instruction shard to a preference phase (ptx / joint), with a fresh
    SFT batch for every optimizer step. ``refresh_reference``: before this
    phase trains, the frozen reference becomes the current policy
    (``reference.refresh``). ``joint_budget``: this preference phase also
    carries its round's instruction budget (the ``joint`` schedule): it runs
    the SFT phase's steps plus the preference phase's, with both batches
    shrunk so each dataset's examples per round equal the alternating
    schedules', at the step-weighted mean learning rate of the two.
    """

    kind: Literal["sft", "preference"]
    shard: int
    num_shards: int
    anchor: str | None = None
    record_anchor: bool = False
    sft_mix: float = 0.0
    steps: int | None = None  # fixed step count (warm-up); None -> from the config
    refresh_reference: bool = False
    joint_budget: bool = False

    @property
    def name(self) -> str:
        mix = f"+sft{self.sft_mix:g}" if self.sft_mix else ""
        if self.steps is not None and self.num_shards == 1:
            return f"{self.kind}-warmup"
        return f"{self.kind}{mix}[{self.shard + 1}/{self.num_shards}]"

    def to_dict(self) -> dict:
        return asdict(self)
