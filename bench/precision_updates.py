"""How many weights a short SFT run actually changes, per ``model.precision``.

Why: pure-bf16 training (weights and AdamW state in bf16) rounds away most
updates of size ~lr, so a run with a small learning rate mostly makes no-op
steps -- and starves the movement-based EWC importance. ``bf16-mixed`` keeps
fp32 master weights and optimizer state and only computes in bf16, so small
updates accumulate as in fp32. This script runs the real ``hbat train``
(``sft_only``, one phase) once per precision on the same model, data, seed,
steps and learning rate, then compares the saved ``final/`` export with the
starting weights: the fraction of transformer-block weight elements
(embeddings and norms aside) whose stored value changed.

    python bench/precision_updates.py                      # smollm2-135m, 50 steps at lr 1e-5
    python bench/precision_updates.py --model /tmp/tiny --steps 10   # quick, on a tiny model

Writes the table to ``bench/results/precision_updates.md``.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def block_fraction_changed(start: dict[str, torch.Tensor], final_dir: Path) -> tuple[float, int]:
    """Fraction of transformer-block matrix elements of ``final_dir`` that differ
    from ``start`` (compared in the export's own dtype)."""
    from safetensors.torch import load_file

    final: dict[str, torch.Tensor] = {}
    for f in sorted(final_dir.glob("*.safetensors")):
        final.update(load_file(str(f)))
    changed = total = 0
    for name, w in final.items():
        if ".layers." not in name or "norm" in name:
            continue
        ref = start[name].to(w.dtype)
        changed += int((w != ref).sum())
        total += w.numel()
    return changed / max(1, total), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16-mixed", "bf16-pure"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "precision_updates.md"))
    args = ap.parse_args()

    from hbat.models import load_causal_lm
    from hbat.models.precision import cpu_supports_bf16
    from hbat.orchestrator.config import validate_config
    from hbat.orchestrator.demo_data import make_demo_data
    from hbat.orchestrator.driver import train

    work = Path(tempfile.mkdtemp(prefix="hbat-precision-"))
    demo = make_demo_data(work / "demo")
    start = {k: v.detach().float().clone() for k, v in load_causal_lm(args.model, dtype=torch.float32).state_dict().items()}
    rows = []
    try:
        for prec in args.precisions:
            cfg = validate_config({
                "run": {"name": prec, "output_dir": str(work / "runs"), "seed": 0},
                "model": {"policy": args.model, "precision": prec},
                "data": {"sft": str(demo["sft"]), "max_prompt_len": 96, "max_len": 160},
                "resources": {"torch_threads": 2},
                "schedule": {"name": "sft_only", "rounds": 1},
                "sft": {"batch_size": args.batch, "steps_per_phase": args.steps, "optim": {"lr": args.lr}},
                "logging": {"tensorboard": False, "progress": False},
            })
            t0 = time.time()
            train(cfg)
            wall = time.time() - t0
            frac, n = block_fraction_changed(start, cfg.run_dir() / "final")
            rows.append((prec, frac, n, wall))
            print(f"{prec:>10}: {frac:7.2%} of {n:,} block weight elements changed  ({wall:.0f} s)", flush=True)
            shutil.rmtree(cfg.run_dir(), ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "# Weights changed by a short SFT run, per precision",
        "",
        f"`python bench/precision_updates.py --model {args.model} --steps {args.steps} --lr {args.lr}` "
        f"(written by the script; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"bf16 autocast on this CPU: {cpu_supports_bf16()}).",
        "",
        f"`hbat train` with `schedule.name=sft_only`, {args.steps} AdamW steps at lr {args.lr}, batch {args.batch}, "
        "demo SFT data, seed 0. Changed = stored value in `final/` differs from the starting weight "
        "(transformer-block matrices; embeddings and norms aside).",
        "",
        "| model.precision | block weights changed | elements | wall s |",
        "|---|---|---|---|",
        *[f"| `{p}` | {f:.2%} | {n:,} | {w:.0f} |" for p, f, n, w in rows],
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
