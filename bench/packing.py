"""A training step on rows packed without padding against the same rows padded.

One ``PolicyWorker`` (in-process, no Ray) trains one SFT batch whose answers
differ in length -- the built-in demo task's terse demonstrations ("12.")
mixed with its wordy preferred answers, as an instruction phase over mixed
data sees them, and ``--long-rows`` rows whose answer is four wordy answers
in a row (the long tail every real SFT set has; 0 leaves it out) -- with
``model.packing: off`` (every row padded to the longest) and ``on``
(``models/packing.py``: real tokens end to end in bins of the padded
length, block-diagonal causal attention), alternated round after round from
the same weights. It reports the median step time of each, the
ratio, the tokens each forward runs, and the FLOP floor of the real tokens at
the fp32 matmul ceiling measured in the same script. Both runs' first-step
losses are printed: they must agree (the tests check this exactly).

Usage::

    python bench/packing.py                     # smollm2-135m, fp32, 16 rows (1 long), 4 steps x 3 rounds
    python bench/packing.py --long-rows 0 --out bench/results/packing_no_long_rows.md
    python bench/packing.py --tiny --steps 2 --rounds 1

The table is printed and written to ``bench/results/packing.md`` by this
script; never edit it by hand.
"""

from __future__ import annotations

import argparse
import json
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
from flops import matmul_ceiling, train_flops  # noqa: E402 - bench/ is not a package
from run_info import git_rev  # noqa: E402


def mixed_sft_batch(tokenizer, rows: int, data_dir: Path, long_rows: int = 1):
    """Terse demonstrations and wordy preferred answers, alternating, as one SFT
    batch; the last ``long_rows`` rows answer with four wordy answers joined."""
    from hbat.orchestrator.data import SFTDataset, collate_sft
    from hbat.orchestrator.demo_data import make_demo_data

    paths = make_demo_data(data_dir / "demo")
    terse = [json.loads(x) for x in Path(paths["sft"]).read_text().splitlines() if x.strip()]
    wordy = [json.loads(x) for x in Path(paths["preference"]).read_text().splitlines() if x.strip()]
    records = []
    for i in range(rows):
        r = terse[i // 2] if i % 2 == 0 else {"prompt": wordy[i // 2]["prompt"], "response": wordy[i // 2]["chosen"]}
        if i >= rows - long_rows:
            r = {"prompt": r["prompt"], "response": " ".join(w["chosen"] for w in wordy[i:i + 4])}
        records.append({"prompt": r["prompt"], "response": r["response"]})
    path = data_dir / "mixed_sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    ds = SFTDataset.from_file(str(path), tokenizer)
    return collate_sft([ds[i] for i in range(len(ds))], ds.pad_id)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tiny", action="store_true", help="tiny random model (smoke)")
    ap.add_argument("--rows", type=int, default=16, help="SFT rows per step")
    ap.add_argument("--steps", type=int, default=4, help="steps per phase (the first is warm-up)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--long-rows", type=int, default=1, help="rows answering with 4 wordy answers joined")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    from hbat.actors.policy import LossPart, PolicyWorker
    from hbat.models import load_tokenizer, make_tiny_checkpoint, resolve_model_path
    from hbat.models.packing import pack_rows
    from hbat.orchestrator.config import OptimConfig

    out = Path(args.out) if args.out else BENCH_DIR / "results" / ("packing_tiny.md" if args.tiny else "packing.md")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hbat-bench-") as tmp:
        model = str(make_tiny_checkpoint(Path(tmp) / "tiny")) if args.tiny else resolve_model_path(args.model)
        label = "tiny random Llama" if args.tiny else args.model
        batch = mixed_sft_batch(load_tokenizer(model), args.rows, Path(tmp), args.long_rows)
        real = int(batch["attention_mask"].sum())
        bins = pack_rows(batch["input_ids"], batch["attention_mask"]).input_ids.shape
        w = PolicyWorker(model, precision="fp32", device="cpu", torch_threads=args.threads, packing="off")
        n_params = sum(p.numel() for p in w.model.parameters() if p.requires_grad)
        start_weights = {k: v.detach().clone() for k, v in w.model.state_dict().items()}
        optim = OptimConfig(lr=1e-5)
        times: dict[str, list[float]] = {"off": [], "on": []}
        first_loss: dict[str, float] = {}
        for r in range(args.rounds):
            for mode in (["off", "on"] if r % 2 == 0 else ["on", "off"]):
                w.packing = mode
                w.model.load_state_dict(start_weights)
                w.begin_phase("sft", optim, args.steps)
                ts = []
                for i in range(args.steps):
                    t = time.perf_counter()
                    m = w.train_step([LossPart("sft", batch)])
                    ts.append(time.perf_counter() - t)
                    if i == 0:
                        first_loss.setdefault(mode, m["sft/loss"])
                w.end_phase()
                times[mode] += ts[1:]
                print(f"round {r + 1} packing={mode}: {['%.2f' % t for t in ts]}", flush=True)
        ceiling = matmul_ceiling(args.threads)
        med = {k: statistics.median(v) for k, v in times.items()}
        floor = train_flops(n_params, real) / ceiling
        B, T = batch["input_ids"].shape
        lines = [
            "# Packed rows vs padded rows, one SFT step (generated by bench/packing.py -- do not edit)",
            "",
            f"- command: `python bench/{Path(__file__).name} {' '.join(argv if argv is not None else sys.argv[1:])}`",
            f"- date (UTC): {datetime.now(UTC):%Y-%m-%d %H:%M}; elapsed {time.perf_counter() - start:.0f} s",
            f"- hbat git: {git_rev()}; torch {torch.__version__}; transformers {transformers.__version__}; "
            f"machine {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch threads",
            f"- model: {label}, {n_params / 1e6:.1f} M parameters, fp32, SDPA attention; "
            f"{args.rounds} rounds alternating the order, {args.steps} steps per phase, the first excluded",
            f"- batch: {B} SFT rows (terse demonstrations and wordy preferred answers of the demo task, "
            f"{args.long_rows} answering with four wordy answers), "
            f"{real} real tokens; padded {B}x{T} = {B * T} tokens, packed {bins[0]}x{bins[1]} = {bins[0] * bins[1]}",
            "",
            "| packing | tokens per forward | median s/step | speed vs padded | share of the fp32 floor |",
            "|---|---:|---:|---:|---:|",
            f"| off (padded) | {B * T} | {med['off']:.3f} | 1.00x | {100 * floor / med['off']:.1f} % |",
            f"| on (packed) | {bins[0] * bins[1]} | {med['on']:.3f} | {med['off'] / med['on']:.2f}x | "
            f"{100 * floor / med['on']:.1f} % |",
            "",
            f"- FLOP floor: 6 x {n_params / 1e6:.1f} M x {real} real tokens at the measured fp32 matmul ceiling "
            f"{ceiling / 1e9:.0f} GFLOP/s = {floor:.3f} s",
            f"- first-step loss: padded {first_loss['off']:.6f}, packed {first_loss['on']:.6f} "
            f"(difference {abs(first_loss['off'] - first_loss['on']):.2e})",
        ]
        text = "\n".join(lines)
        print("\n" + text)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {os.path.relpath(out, Path.cwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
