"""Training state and step time per rank: one unsharded process vs a 2-rank FSDP2 group.

Why: the point of a data-parallel worker group is that each rank holds 1/N
of the parameters, gradients and AdamW state (and processes 1/N of the
batch). This script runs the real ``PolicyWorker`` both ways on the same
model, global batch, precision and optimizer, side by side in one run:

* ``1 process``: the unsharded policy (``resources.policy.replicas: 1``), all
  torch threads of the machine;
* ``2 ranks``: two processes forming a gloo group through
  ``GroupMember.join_group`` and sharded with FSDP2 (``replicas: 2``), each
  with half the threads, each training on its slice of the batch
  (``orchestrator/dispatch.py``).

It reports per rank the bytes of parameters, gradients and optimizer state
it holds (counted from the tensors themselves: the local shards), the
process's peak resident memory (``ru_maxrss``, which also counts the full
model loaded from disk before sharding and allocator slack), and the mean
SFT step time after a warm-up step, with the ratio. The bound on the step
time is the machine's matmul throughput: with both cores busy in either
layout, 2 ranks can at best match 1 process (same FLOPs, same cores) and pay
for the gathers and reduce-scatters on top.

    python bench/fsdp_scaling.py                       # embedded SmolLM2-135M, fp32
    python bench/fsdp_scaling.py --model /tmp/tiny --steps 2

Writes ``bench/results/fsdp_scaling.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import matmul_ceiling, param_count  # noqa: E402 - bench/ is not a package

ROOT = Path(__file__).resolve().parents[1]


def _batch(pad: int, rows: int, length: int, seed: int = 0):
    from hbat.orchestrator.data import collate_sft

    rng = random.Random(seed)
    ex = [{"input_ids": [rng.randrange(10, 5000) for _ in range(length)],
           "loss_mask": [0] * (length // 4) + [1] * (length - length // 4)} for _ in range(rows)]
    return collate_sft(ex, pad)


def _state_bytes(worker) -> dict[str, int]:
    from hbat.actors.distributed import local

    params = list(worker.trainable().values())
    return {"params": sum(local(p).numel() * local(p).element_size() for p in params),
            "grads": sum(local(p.grad).numel() * local(p.grad).element_size() for p in params if p.grad is not None),
            "optim": sum(local(v).numel() * local(v).element_size() for st in worker.opt.state.values()
                         for v in st.values() if torch.is_tensor(v) and v.dim() > 0)}


def run(rank: int, world: int, args, port: int, out) -> None:
    from hbat.actors.policy import LossPart, PolicyWorker
    from hbat.orchestrator.config import OptimConfig
    from hbat.orchestrator.dispatch import split_parts

    threads = max(1, args.threads // world)
    w = PolicyWorker(args.model, precision=args.precision, seed=0, torch_threads=threads, shard=world > 1,
                     device="cpu", gradient_checkpointing=args.gradient_checkpointing)
    if world > 1:
        w.join_group(rank, world, "127.0.0.1", port)
    optim = OptimConfig(lr=1e-5)
    w.begin_phase("sft", optim, args.steps + 1)
    part = LossPart("sft", _batch(w.tokenizer.pad_token_id, args.batch, args.seq))
    mine = split_parts([part], world)[rank] if world > 1 else [part]
    # gradients held after a backward (measured before the step frees them)
    w._backward(mine[0], w._loss, {})
    grads = _state_bytes(w)["grads"]
    w.model.zero_grad(set_to_none=True)
    w.train_step(mine)  # warm-up step; creates the AdamW state
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        stats = w.train_step(mine)
        times.append(time.perf_counter() - t)
    b = _state_bytes(w)
    out.put({"rank": rank, "world": world, "params": b["params"], "grads": grads, "optim": b["optim"],
             "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "step_s": sum(times) / len(times),
             "loss": stats["sft/loss"]})
    if world > 1:
        w.leave_group()


def measure(world: int, args) -> list[dict]:
    import socket

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=run, args=(r, world, args, port, out)) for r in range(world)]
    for p in procs:
        p.start()
    results = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    return sorted(results, key=lambda r: r["rank"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch", type=int, default=8, help="global batch rows")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fsdp_scaling.md"))
    args = ap.parse_args()
    from hbat.models import resolve_model_path

    args.model = resolve_model_path(args.model)
    one = measure(1, args)
    two = measure(2, args)
    ceiling = matmul_ceiling(args.threads)
    n_params = param_count(args.model)
    tokens = args.batch * args.seq
    floor = 6 * n_params * tokens / ceiling  # forward + backward matmuls of a dense decoder, attention aside
    mib = 1024**2
    lines = [
        "# Training state and step time per rank: 1 process vs a 2-rank FSDP2 group",
        "",
        f"`python bench/fsdp_scaling.py --batch {args.batch} --seq {args.seq} --steps {args.steps} "
        f"--precision {args.precision}`"
        + (" --gradient-checkpointing" if args.gradient_checkpointing else ""),
        "",
        f"Model `{Path(args.model).name}`, SFT steps on a global batch of {args.batch} rows × {args.seq} tokens, "
        f"AdamW, {args.precision}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, gloo. 1 process uses {args.threads} threads; each rank {max(1, args.threads // 2)}.",
        "",
        "| layout | rank | params MiB | grads MiB | AdamW MiB | state total MiB | peak RSS MiB | step s | loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in (("1 process", one), ("2 ranks (FSDP2)", two)):
        for r in rows:
            total = r["params"] + r["grads"] + r["optim"]
            lines.append(f"| {name} | {r['rank']} | {r['params'] / mib:.1f} | {r['grads'] / mib:.1f} | "
                         f"{r['optim'] / mib:.1f} | {total / mib:.1f} | {r['rss'] / mib:.0f} | {r['step_s']:.2f} | "
                         f"{r['loss']:.4f} |")
    s1 = sum(one[0][k] for k in ("params", "grads", "optim"))
    s2 = max(sum(r[k] for k in ("params", "grads", "optim")) for r in two)
    t1, t2 = one[0]["step_s"], max(r["step_s"] for r in two)
    lines += [
        "",
        f"- training state per rank, 2 ranks / 1 process: **{s2 / s1:.3f}** (1/2 is the ideal; the remainder is "
        "padding of shards to equal size)",
        f"- step time, 2 ranks / 1 process: **{t2 / t1:.2f}×** on the same {os.cpu_count()} cores and the same "
        "FLOPs (the ranks add gathers and reduce-scatters; two 1-thread processes may use the cores better than "
        "one 2-thread process); on N devices each rank computes 1/N of the batch",
        f"- FLOP floor of the step: 6 × {n_params / 1e6:.1f} M parameters × {tokens} tokens = "
        f"{6 * n_params * tokens / 1e12:.2f} TFLOP at the measured fp32 matmul ceiling of "
        f"{ceiling / 1e9:.0f} GFLOP/s ({args.threads} threads, 2048² matmul) = **{floor:.2f} s**; "
        f"1 process reaches {floor / t1:.0%} of it, 2 ranks {floor / t2:.0%}",
        f"- losses agree: {one[0]['loss']:.6f} vs {two[0]['loss']:.6f} (the same optimizer steps)",
        "- peak RSS includes the full model each process loads from disk before sharding it.",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
