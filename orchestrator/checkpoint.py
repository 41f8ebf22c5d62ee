"""Run checkpoints: crash-safe, durable, and checked before they are trusted.

* Crash-safe: each checkpoint is written into a temporary folder and renamed
  into place; the ``latest`` pointer is replaced atomically. A SIGKILL at any
  instant leaves the previous checkpoint as it was.
* Durable: every file is fsynced, then the checkpoint folder, then (after
  the rename) the ``checkpoints/`` folder, and the pointer is fsynced before
  its rename and its folder after it. Without this a power cut can leave a
  renamed folder whose files are empty.
* Checked: a ``COMPLETE`` marker, written last, lists every file with its
  size. ``--resume`` takes the checkpoint the pointer names only if its
  marker, ``state.json`` and files agree; otherwise it says what is wrong and
  falls back to the newest complete checkpoint, or stops with exit code 2
  (:class:`CheckpointError`) when there is none.
* A full disk while writing is reported as "no space left on <path> while
  writing checkpoint N; the previous checkpoint is intact", not as a Ray
  traceback around ``RuntimeError [enforce fail at inline_container.cc]``.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from hbat.models.atomic import _fsync_dir, atomic_dir, atomic_write_bytes, fsync_file, fsync_tree
from hbat.orchestrator.config import ConfigError

log = logging.getLogger("hbat.checkpoint")

MARKER = "COMPLETE"  # written last; lists every file of the checkpoint with its size
STATE = "state.json"


class CheckpointError(ConfigError):
    """No usable checkpoint, or one could not be written (the CLI exits 2)."""


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


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: a Ray task error's cause, a chained
    exception) is a write that failed for lack of space.

    torch.save does not raise ``OSError(ENOSPC)``: its zip writer fails an
    internal check (``[enforce fail at inline_container.cc] ... unexpected
    pos`` or ``file write failed``) when a write comes up short.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        if "inline_container" in text and ("unexpected pos" in text or "file write failed" in text):
            return True
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return False


def _load_state(folder: Path) -> RunState:
    """``state.json`` as a RunState; ValueError saying what is wrong with it."""
    path = folder / STATE
    if not path.is_file():
        raise ValueError(f"{STATE} is missing")
    text = path.read_text(errors="replace")
    if not text.strip():
        raise ValueError(f"{STATE} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{STATE} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    known = {f.name for f in fields(RunState)}
    if not isinstance(data, dict) or set(data) - known:
        raise ValueError(f"{STATE} does not hold a run state")
    try:
        return RunState(**data)
    except TypeError as exc:
        raise ValueError(f"{STATE} does not hold a run state ({exc})") from None


def check_checkpoint(folder: Path) -> RunState:
    """The checkpoint's state if the folder is complete; ValueError with the reason if not."""
    if not folder.is_dir():
        raise ValueError("the folder is missing")
    marker = folder / MARKER
    if marker.is_file():
        try:
            listed = json.loads(marker.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"its {MARKER} marker is damaged") from None
        state = _load_state(folder)  # its own messages (empty, not JSON) say more than a size
        for name, size in listed.items():
            f = folder / name
            if not f.is_file():
                raise ValueError(f"{name} is missing")
            if f.stat().st_size != size:
                raise ValueError(f"{name} has {f.stat().st_size} bytes, {size} were written")
        return state
    # a checkpoint of an older hbat (before the marker): its rename was atomic,
    # so it is complete if its state and the policy file are readable
    state = _load_state(folder)
    policy = folder / "policy.pt"
    if not policy.is_file() or policy.stat().st_size == 0:
        raise ValueError(f"no {MARKER} marker and policy.pt is missing or empty")
    return state


class CheckpointManager:
    def __init__(self, run_dir: Path, keep: int = 2, create: bool = True):
        self.root = Path(run_dir) / "checkpoints"
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._warned: set[str] = set()

    def _folders(self) -> list[Path]:
        """Checkpoint folders, newest first (names sort by global step)."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("ckpt-")), reverse=True)

    def save(self, state: RunState, write_actor_states) -> Path:
        """``write_actor_states(folder)`` writes the actors' files into the temp folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-{state.global_step:06d}-p{state.phase_index:03d}-s{state.step_in_phase:05d}"
        final = self.root / name
        try:
            with atomic_dir(final) as tmp:
                write_actor_states(tmp)
                (tmp / STATE).write_text(json.dumps(asdict(state), indent=2))
                files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*"))
                         if p.is_file()}
                fsync_tree(tmp)  # every file, then the folders: before the marker says "complete"
                (tmp / MARKER).write_text(json.dumps({"files": files, "global_step": state.global_step}, indent=2))
                fsync_file(tmp / MARKER)
                _fsync_dir(tmp)
            atomic_write_bytes(self.root / "latest", name.encode())
            _fsync_dir(self.root)  # the pointer's new name
        except Exception as exc:
            if disk_full(exc):
                previous = self._newest_complete(exclude=name)
                intact = (f"the previous checkpoint {previous} is intact" if previous
                          else "there is no earlier checkpoint")
                raise CheckpointError(f"no space left on {self.root} while writing checkpoint {state.global_step} "
                                      f"({name}); {intact}") from None
            raise
        self._prune(keep_name=name)
        return final

    def _newest_complete(self, exclude: str | None = None) -> str | None:
        for folder in self._folders():
            if folder.name == exclude:
                continue
            try:
                check_checkpoint(folder)
                return folder.name
            except (ValueError, OSError):
                continue
        return None

    def latest(self) -> tuple[RunState, Path] | None:
        """The newest complete checkpoint: the one ``latest`` names if it is
        complete, else (with a warning saying why) the newest complete folder.
        None when the run has no checkpoint at all; :class:`CheckpointError`
        when it has some but none is complete."""
        pointer = self.root / "latest"
        folders = self._folders()
        if not pointer.exists() and not folders:
            return None
        problems = []
        named = None
        if pointer.exists():
            try:
                named = pointer.read_text().strip() or None
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"the pointer {pointer} cannot be read ({exc})")
            if named is None and not problems:
                problems.append(f"the pointer {pointer} is empty")
            elif named is not None and ("/" in named or named in (".", "..")):
                problems.append(f"the pointer {pointer} names '{named}', not a checkpoint folder")
                named = None
        order = ([self.root / named] if named else []) + [f for f in folders if f.name != named]
        for folder in order:
            try:
                state = check_checkpoint(folder)
            except (ValueError, OSError) as exc:
                what = " that latest names" if folder.name == named else ""
                problems.append(f"checkpoint {folder.name}{what} is not usable: {exc}")
                continue
            if problems:
                msg = f"{'; '.join(problems)}; resuming from the newest complete checkpoint {folder.name}"
                if msg not in self._warned:
                    self._warned.add(msg)
                    log.warning(msg)
            return state, folder
        raise CheckpointError(f"--resume: no complete checkpoint in {self.root} ({'; '.join(problems)}); "
                              "start the run again with --overwrite")

    def _prune(self, keep_name: str) -> None:
        """Keep the ``keep`` newest complete checkpoints; drop incomplete ones and
        leftovers of a crash mid-save."""
        complete = 0
        for folder in self._folders():
            if folder.name == keep_name:
                complete += 1
                continue
            try:
                check_checkpoint(folder)
                ok = True
            except (ValueError, OSError):
                ok = False
            if ok and complete < self.keep:
                complete += 1
                continue
            shutil.rmtree(folder, ignore_errors=True)
        for stale in self.root.iterdir():
            if stale.name.startswith(".ckpt-"):
                shutil.rmtree(stale, ignore_errors=True)


def wait_all(refs: list) -> list:
    """``ray.get`` of every reference, after all of them have finished.

    ``ray.get(refs)`` raises at the first failed task and leaves the others'
    errors unread, which Ray later prints as "Unhandled error" tracebacks; a
    full disk fails every actor's save at once.
    """
    import ray

    ray.wait(refs, num_returns=len(refs))
    out, first = [], None
    for ref in refs:
        try:
            out.append(ray.get(ref))
        except Exception as exc:  # noqa: BLE001 - re-raised below, after reading every result
            first = first or exc
    if first is not None:
        raise first
    return out
