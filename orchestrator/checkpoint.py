"""Run checkpoints: a folder per checkpoint written atomically (temp + rename)
plus a ``latest`` pointer replaced atomically, so a SIGKILL at any instant
leaves the previous complete checkpoint as the one ``--resume`` reads."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hbat.models.atomic import atomic_dir, atomic_write_bytes


@dataclass
class RunState:
    """Where the driver is: resume continues at ``phase_index``/``step_in_phase``."""

    phase_index: int = 0
    step_in_phase: int = 0
    global_step: int = 0
    reward_model: str | None = None  # path of the trained reward model, once trained
    completed_phases: list[str] = field(default_factory=list)
    finished: bool = False
    reference_version: int | None = None  # policy version the reference was refreshed to (None: initial model)


class CheckpointManager:
    def __init__(self, run_dir: Path, keep: int = 2, create: bool = True):
        self.root = Path(run_dir) / "checkpoints"
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def save(self, state: RunState, write_actor_states) -> Path:
        """``write_actor_states(folder)`` writes the actors' files into the temp folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-{state.global_step:06d}-p{state.phase_index:03d}-s{state.step_in_phase:05d}"
        final = self.root / name
        with atomic_dir(final) as tmp:
            write_actor_states(tmp)
            (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
        atomic_write_bytes(self.root / "latest", name.encode())
        self._prune(keep_name=name)
        return final

    def latest(self) -> tuple[RunState, Path] | None:
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        folder = self.root / pointer.read_text().strip()
        state = RunState(**json.loads((folder / "state.json").read_text()))
        return state, folder

    def _prune(self, keep_name: str) -> None:
        ckpts = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("ckpt-"))
        for old in ckpts[: max(0, len(ckpts) - self.keep)]:  # names sort by global step
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.iterdir():  # leftovers of a crash mid-save
            if stale.name.startswith(".ckpt-"):
                shutil.rmtree(stale, ignore_errors=True)
