"""What HBAT's EWC penalty costs per training step, measured side by side.

One ``PolicyWorker`` (used in-process, no Ray) trains the same SFT batch in
two kinds of phase, alternated round after round:

* **anchored**: an sft phase that applies the anchor a preceding preference
  phase recorded (modified EWC, ``strength`` 100, ``normalize: max``) -- the
  penalty gradient ``2 lambda w (theta - theta*)`` is added to every
  parameter's gradient each step (:meth:`EWCAnchor.add_gradient`);
* **plain**: the same phase without an anchor.

Both phases start from the same weights (restored before each phase), so
they do the same work apart from the penalty. The overhead is
``(anchored - plain) / plain`` of the median step time; the issue's target
is at most 10 %. With ``--offload`` the anchors stay in host memory
(``ewc.offload_anchors``). The bandwidth bound of the penalty is stated: it
reads weights, anchor and grad and writes grad once per parameter, 16 bytes
per fp32 parameter.

Usage::

    python bench/ewc_overhead.py                 # smollm2-135m, fp32, 8 SFT rows, K=4 x 3 rounds
    python bench/ewc_overhead.py --tiny --steps 3 --rounds 1

The table is printed and written to ``bench/results/ewc_overhead.md`` by this
script; never edit it by hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from run_info import git_rev  # noqa: E402 - bench/ is not a package


def copy_bandwidth(threads: int, n: int = 64 * 2**20) -> float:
    """Bytes/s of ``a.add_(b)`` on fp32 tensors of ``n`` elements (reads 2, writes 1; best of 5)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n), torch.randn(n)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            a.add_(b)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    return 3 * 4 * n / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tiny", action="store_true", help="tiny random model (smoke)")
    ap.add_argument("--rows", type=int, default=8, help="SFT rows per step")
    ap.add_argument("--steps", type=int, default=4, help="steps per phase (the first is warm-up)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed"])
    ap.add_argument("--offload", action="store_true", help="anchors in host memory (ewc.offload_anchors)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    from dpo_vs_trl import sft_batch
    from hbat.actors.policy import LossPart, PolicyWorker
    from hbat.models import load_tokenizer, make_tiny_checkpoint, resolve_model_path
    from hbat.orchestrator.config import EWCConfig, OptimConfig

    out = Path(args.out) if args.out else BENCH_DIR / "results" / ("ewc_overhead_tiny.md" if args.tiny else "ewc_overhead.md")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hbat-bench-") as tmp:
        model = str(make_tiny_checkpoint(Path(tmp) / "tiny")) if args.tiny else resolve_model_path(args.model)
        label = "tiny random Llama" if args.tiny else args.model
        tok = load_tokenizer(model)
        _, batch = sft_batch(tok, args.rows, Path(tmp) / "data")
        w = PolicyWorker(model, precision=args.precision, device="cpu", torch_threads=args.threads,
                         offload_anchors=args.offload)
        optim = OptimConfig(lr=1e-5)
        part = [LossPart("sft", batch)]
        # a preference phase records the anchor the anchored phases apply
        w.begin_phase("preference", optim, 2, ewc=EWCConfig(method="modified", strength=100.0, normalize="max"))
        w.train_step(part)
        w.end_phase()
        start_weights = {k: v.detach().clone() for k, v in w.model.state_dict().items()}
        n_params = sum(p.numel() for p in w.model.parameters() if p.requires_grad)
        times: dict[str, list[list[float]]] = {"plain": [], "anchored": []}
        penalties = []
        for r in range(args.rounds):
            order = ["plain", "anchored"] if r % 2 == 0 else ["anchored", "plain"]
            for kind in order:
                w.model.load_state_dict(start_weights)
                w.begin_phase("sft", optim, args.steps, anchor="preference" if kind == "anchored" else None)
                ts = []
                for _ in range(args.steps):
                    t = time.perf_counter()
                    m = w.train_step(part)
                    ts.append(time.perf_counter() - t)
                    if kind == "anchored":
                        penalties.append(m["ewc/penalty"])
                w.end_phase()
                times[kind].append(ts[1:])
                print(f"round {r + 1} {kind}: {['%.2f' % t for t in ts]}", flush=True)
        # the penalty call alone (what an anchored step adds), timed directly: less
        # exposed to other load on the machine than the difference of two step times
        w.begin_phase("sft", optim, 1, anchor="preference")
        for p in w.model.parameters():
            p.grad = torch.zeros_like(p)
        alone = []
        for _ in range(5):
            t = time.perf_counter()
            w._apply_penalty(w.anchors["preference"])
            alone.append(time.perf_counter() - t)
        w.end_phase()
        penalty_s = statistics.median(alone[1:])
        med = {k: statistics.median([t for rnd in v for t in rnd]) for k, v in times.items()}
        per_round = [statistics.median(a) / statistics.median(p) - 1 for a, p in zip(times["anchored"], times["plain"])]
        bw = copy_bandwidth(args.threads)
        floor = 16 * n_params / bw
        overhead = med["anchored"] / med["plain"] - 1
        rev = git_rev()
        lines = [
            "# EWC penalty overhead per training step (generated by bench/ewc_overhead.py -- do not edit)",
            "",
            f"- command: `python bench/{Path(__file__).name} {' '.join(argv if argv is not None else sys.argv[1:])}`",
            f"- date (UTC): {datetime.now(UTC):%Y-%m-%d %H:%M}; elapsed {time.perf_counter() - start:.0f} s",
            f"- hbat git: {rev}; torch {torch.__version__}; machine {platform.machine()}, {os.cpu_count()} CPUs, "
            f"{args.threads} torch threads",
            f"- model: {label}, {n_params / 1e6:.1f} M trainable parameters, precision {args.precision}; "
            f"SFT batch {tuple(batch['input_ids'].shape)}; anchors {'offloaded to host' if args.offload else 'on the device'}",
            f"- {args.rounds} rounds alternating the order, {args.steps} steps per phase, the first excluded",
            "",
            "| phase | median s/step | overhead vs plain |",
            "|---|---:|---:|",
            f"| plain (no anchor) | {med['plain']:.3f} | - |",
            f"| anchored (modified EWC, penalty gradient every step) | {med['anchored']:.3f} | {100 * overhead:+.1f} % |",
            "",
            f"- the penalty call alone (`PolicyWorker._apply_penalty`, median of 4 after a warm-up): "
            f"{1000 * penalty_s:.0f} ms = {100 * penalty_s / med['plain']:.1f} % of a plain step",
            f"- per-round overhead: {', '.join(f'{100 * x:+.1f} %' for x in per_round)}",
            f"- penalty values seen (must grow from 0 as the weights leave the anchor): "
            f"{', '.join(f'{p:.3g}' for p in penalties[: args.steps])}",
            f"- bandwidth bound of the penalty: 16 B x {n_params / 1e6:.1f} M parameters at the measured "
            f"{bw / 1e9:.1f} GB/s (fp32 add, {args.threads} threads) = {1000 * floor:.0f} ms "
            f"({100 * floor / med['plain']:.1f} % of a plain step)",
            f"- target: overhead <= 10 % -> step-time difference {'MET' if overhead <= 0.10 else 'NOT MET'}, "
            f"penalty call alone {'MET' if penalty_s <= 0.10 * med['plain'] else 'NOT MET'}",
        ]
        text = "\n".join(lines)
        print("\n" + text)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {os.path.relpath(out, Path.cwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
