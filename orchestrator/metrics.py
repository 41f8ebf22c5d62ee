"""Metrics sink: TensorBoard by default, W&B optional, and a JSONL file in the
run folder that plots and tests read back."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, wandb: bool = False, wandb_project: str = "hbat",
                 config: dict | None = None, run_name: str = "run"):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self.wandb = None
        if wandb:
            try:
                import wandb as wb
            except ImportError:
                raise RuntimeError("logging.wandb is true but wandb is not installed: pip install 'hbat[wandb]'") from None
            self.wandb = wb.init(project=wandb_project, name=run_name, config=config or {}, dir=str(self.run_dir))

    def log(self, step: int, metrics: dict, phase: str | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        record = {"step": step, "time": time.time(), **({"phase": phase} if phase else {}), **clean}
        self.jsonl.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(clean, step=step)

    def phase_boundary(self, step: int, index: int, name: str) -> None:
        self.log(step, {"phase/index": index}, phase=name)
        if self.tb is not None:
            self.tb.add_text("phase", f"step {step}: start of phase {index} {name}", step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
