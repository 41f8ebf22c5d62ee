"""Bounded memory check of the policy endpoint on loopback: the worst request
the token budget allows stays under the documented per-request memory.

    python bench/serve_memory.py                          # smollm2-135m, 5 requests, a few minutes on 2 cores
    python bench/serve_memory.py --checkpoint PATH --max-request-tokens 4096

Starts a local Ray and ``hbat serve`` (the CLI's own ``run``) on 127.0.0.1
with one replica and the default limits (``--max-request-tokens 8192``), finds
the replica's process, and for each request shape sends one
``POST /v1/completions`` (token-id prompt of exactly ``prompt`` tokens) while
sampling the replica's resident memory every 10 ms. It reports, per shape,
the KV-cache tokens ``n x (prompt + max_tokens)``, the bound the engine
documents (``TransformersEngine.request_memory_bytes``, deploy/README.md) and
the measured peak minus the memory before the request. Then one request just
over the per-request limit (must be 400) and two concurrent requests at the
limit with ``--max-concurrent-tokens`` equal to it (one must be 429).

So that resident memory follows live memory (and a request cannot hide in
memory an earlier one freed), the replica runs with
``MALLOC_MMAP_THRESHOLD_=65536`` and ``MALLOC_TRIM_THRESHOLD_=0``. Every
request has a time cap; the script sends 7 requests in all. The report is
printed and written to ``bench/results/serve_memory.md``.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Sampler(threading.Thread):
    def __init__(self, pid: int, period: float = 0.01):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss(self.pid))
            time.sleep(self.period)


def _replica_pid(token: str, wait_s: float = 60) -> int:
    """The replica's process: Ray titles it ``ray::ServeReplica:...PolicyServer``; other Ray
    sessions on the machine may run one too, so match this run's marker variable."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"PolicyServer" in cmd and f"HBAT_BENCH_TOKEN={token}".encode() in \
                        Path(f"/proc/{pid}/environ").read_bytes():
                    return int(pid)
            except OSError:
                continue
        time.sleep(0.5)
    raise RuntimeError("no PolicyServer replica of this run")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="smollm2-135m")
    ap.add_argument("--max-request-tokens", type=int, default=8192)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per request")
    ap.add_argument("--out", default="bench/results/serve_memory.md")
    args = ap.parse_args(argv)

    import httpx
    import ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    token = os.urandom(6).hex()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {**MALLOC_ENV, "HBAT_BENCH_TOKEN": token, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    from ray import serve

    from hbat.deploy import cli
    from hbat.deploy.engine import TransformersEngine
    from hbat.models import resolve_model_path

    port = _free_port()
    budget = args.max_request_tokens
    parser = argparse.ArgumentParser(prog="hbat")
    cli.register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["serve", "--checkpoint", args.checkpoint, "--port", str(port), "--model-name", "m",
                            "--replica-cpus", "1", "--max-tokens", str(budget),
                            "--max-request-tokens", str(budget), "--max-concurrent-tokens", str(budget),
                            "--no-blocking"])
    assert cli.run(ns) == 0
    # the bound, from the same code the replica runs (its config; no weights needed for the formula)
    engine = TransformersEngine.__new__(TransformersEngine)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(resolve_model_path(args.checkpoint))
    import torch

    class _M:  # just enough of a model for request_memory_bytes
        config = cfg

        def parameters(self):
            yield torch.zeros(1, dtype=torch.float32)

    engine.model, engine.vocab_size = _M(), cfg.vocab_size
    ctx = cfg.max_position_embeddings
    pid = _replica_pid(token)
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(0)
    shapes = [  # (n, prompt, max_tokens): the examples, then the worst shapes the budget allows
        (1, 1000, 8), (4, 1000, 8), (8, budget // 8 - 8, 8), (2, budget // 2 - 8, 8),
        (1, min(budget, ctx) - 8, 8),
    ]
    rows = []
    with httpx.Client(base_url=url, timeout=args.timeout) as http:
        http.post("/v1/completions", json={"model": "m", "prompt": "warm up", "max_tokens": 2})  # lazy init
        for n, p, m in shapes:
            time.sleep(1.0)
            before = _rss(pid)
            sampler = Sampler(pid)
            sampler.start()
            t = time.time()
            r = http.post("/v1/completions", json={"model": "m", "prompt": [rng.randrange(100, 1000) for _ in range(p)],
                                                   "n": n, "max_tokens": m, "temperature": 1.0, "seed": 1})
            wall = time.time() - t
            sampler.stop.set()
            sampler.join()
            peak = max(sampler.peak, _rss(pid)) - before
            bound = engine.request_memory_bytes(n, p, m)
            rows.append((n, p, m, n * (p + m), bound, peak, r.status_code, wall))
            print(f"n={n} prompt={p} max_tokens={m}: {n * (p + m)} tokens, status {r.status_code}, "
                  f"peak +{peak / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB, {wall:.1f} s", flush=True)
        over = http.post("/v1/completions", json={"model": "m", "prompt": [5] * 100, "n": 8,
                                                   "max_tokens": budget // 8 - 99})
        import concurrent.futures

        at_limit = {"model": "m", "prompt": [5] * 8, "n": 8, "max_tokens": budget // 8 - 8, "temperature": 1.0}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            pair = list(pool.map(lambda _: http.post("/v1/completions", json=at_limit), range(2)))
    serve.shutdown()
    ray.shutdown()

    load = os.getloadavg()
    lines = [
        "# Serve memory per request (bench/serve_memory.py)", "",
        f"checkpoint `{args.checkpoint}`, limits.max_request_tokens = limits.max_concurrent_tokens = {budget}, "
        f"one replica (1 CPU), load average {load[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
        "| n | prompt | max_tokens | n x (prompt + max_tokens) | status | documented bound (MiB) | measured peak (MiB) "
        "| within | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ok = True
    for n, p, m, tokens, bound, peak, status, wall in rows:
        within = status == 200 and peak <= bound
        ok &= within
        lines.append(f"| {n} | {p} | {m} | {tokens} | {status} | {bound / 2**20:.0f} | {peak / 2**20:.0f} | "
                     f"{'yes' if within else 'NO'} | {wall:.1f} |")
    e400 = over.json().get("error", {})
    codes = sorted(r.status_code for r in pair)
    lines += ["", f"- one request over the per-request limit: {over.status_code} `{e400.get('code')}`: "
                  f"{e400.get('message')}",
              f"- two concurrent requests of {budget} tokens each: statuses {codes}"
              + (f"; the 429 says: {next(r for r in pair if r.status_code == 429).json()['error']['message']}"
                 if 429 in codes else "")]
    ok &= over.status_code == 400 and codes == [200, 429]
    lines.append(f"\nresult: {'PASS' if ok else 'FAIL'}")
    report = "\n".join(lines) + "\n"
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
