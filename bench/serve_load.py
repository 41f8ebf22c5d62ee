"""Bounded load test of the policy endpoint on loopback, with Serve autoscaling.

    python bench/serve_load.py                       # tiny random model, ~1-2 minutes
    python bench/serve_load.py --checkpoint smollm2-135m --max-tokens 16 --requests 24

Starts a local Ray (2 CPUs) and Serve on 127.0.0.1, deploys
``hbat.deploy.openai_app:build_app`` with
``autoscaling_config = {min_replicas: 1, max_replicas: 2, target_ongoing_requests: 2}``
(short metric/upscale delays so a bench run can see the scale-up; downscale
is delayed past the end of the run), then for each concurrency level sends a
fixed number of ``POST /v1/chat/completions`` requests (greedy,
``max_tokens`` fixed) from that many concurrent clients, stopping early at a
time cap. It prints req/s, p50/p99 latency and failures per level, the
replica count over time (polled from ``serve.status()``), and whether a
second replica started. The report is also written to
``bench/results/serve_load_tiny.md`` (``serve_load.md`` with ``--checkpoint``).

Numbers depend on what else the machine runs: the load average is printed
with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class ReplicaMonitor(threading.Thread):
    """Polls serve.status() and keeps (t, running, starting, phase) when the counts change."""

    def __init__(self, app: str, deployment: str, t0: float, period: float = 0.25):
        super().__init__(daemon=True)
        self.app, self.deployment, self.t0, self.period = app, deployment, t0, period
        self.samples: list[tuple[float, int, int, str]] = []
        self.stop_event = threading.Event()
        self.phase = "deploy"

    def counts(self) -> tuple[int, int]:
        from ray import serve

        try:
            dep = serve.status().applications[self.app].deployments[self.deployment]
        except KeyError:
            return 0, 0
        states = {str(k).split(".")[-1].upper(): v for k, v in dep.replica_states.items()}
        return states.get("RUNNING", 0), states.get("STARTING", 0) + states.get("PENDING_MIGRATION", 0)

    def run(self):
        last = None
        while not self.stop_event.is_set():
            running, starting = self.counts()
            if (running, starting) != last:
                self.samples.append((time.time() - self.t0, running, starting, self.phase))
                last = (running, starting)
            self.stop_event.wait(self.period)

    def current(self) -> int:
        return self.samples[-1][1] if self.samples else 0


async def _level(url: str, headers: dict, body: dict, concurrency: int, n_requests: int, time_cap: float):
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    issued = 0
    deadline = time.perf_counter() + time_cap
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:

        async def worker():
            nonlocal issued
            while issued < n_requests and time.perf_counter() < deadline:
                issued += 1
                start = time.perf_counter()
                try:
                    r = await client.post(url, json=body)
                    if r.status_code != 200 or not r.json().get("choices"):
                        failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                except Exception as exc:  # noqa: BLE001 - count every failure
                    failures.append(repr(exc))
                    continue
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return latencies, failures, wall, issued


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="policy checkpoint (default: a tiny random model built here)")
    p.add_argument("--concurrency", default="1,4,8", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=160, help="requests per concurrency level")
    p.add_argument("--time-cap", type=float, default=60.0, help="seconds per level at most")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--replica-cpus", type=float, default=0.5)
    p.add_argument("--target-ongoing-requests", type=float, default=2.0)
    p.add_argument("--settle", type=float, default=3.0, help="seconds after the last level, still watching replicas")
    p.add_argument("--out", help="where to write the report (default bench/results/serve_load[_tiny].md)")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    from ray import serve

    from hbat.deploy.openai_app import build_app

    tmp = tempfile.TemporaryDirectory(prefix="hbat-bench-")
    checkpoint = args.checkpoint
    if checkpoint is None:
        from hbat.models import make_tiny_checkpoint

        checkpoint = str(make_tiny_checkpoint(os.path.join(tmp.name, "tiny"), seed=0))
        label = "tiny random Llama (hidden 32, 2 layers)"
    else:
        label = checkpoint
        from hbat.models import resolve_model_path

        resolve_model_path(checkpoint)  # convert an embedded model once, before replicas start

    report: list[str] = []

    def say(*parts, sep=" ", end="\n"):
        text = sep.join(str(x) for x in parts)
        print(text, end=end, flush=True)
        report.append(text + end)

    t_init = time.time()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    autoscaling = {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": args.target_ongoing_requests,
        # bench-sized reaction times (production defaults are slower on purpose)
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2.0,
        "upscale_delay_s": 1.0,
        "downscale_delay_s": 600.0,
    }
    app = build_app({
        "checkpoint": checkpoint,
        "model_name": "bench",
        "backend": "transformers",
        "device": "cpu",
        "dtype": "float32",
        "autoscaling_config": autoscaling,
        "ray_actor_options": {"num_cpus": args.replica_cpus},
        "max_ongoing_requests": 8,
        "torch_threads": 1,
    })
    t0 = time.time()
    monitor = ReplicaMonitor("policy", "PolicyServer", t0)
    monitor.start()
    serve.run(app, name="policy", route_prefix="/")
    say(f"model: {label}; Serve up in {time.time() - t_init:.1f} s (Ray start included)")
    say(f"autoscaling_config: {autoscaling}")
    say(f"load: {args.requests} requests per level (time cap {args.time_cap:.0f} s), "
          f"max_tokens={args.max_tokens}, greedy, 127.0.0.1:{port}")
    say(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": "bench", "messages": [{"role": "user", "content": "write a poem about the sea"}],
            "max_tokens": args.max_tokens, "temperature": 0}
    # one warm-up request (first-call overheads), not counted
    asyncio.run(_level(url, {}, body, 1, 1, 30))

    rows = []
    total_failures = 0
    for c in levels:
        monitor.phase = f"c={c}"
        start_t = time.time() - t0
        replicas_before = monitor.current()
        lat, fails, wall, issued = asyncio.run(_level(url, {}, body, c, args.requests, args.time_cap))
        total_failures += len(fails)
        rows.append((c, issued, len(lat), len(fails), wall, len(lat) / wall if wall else 0.0,
                     _pct(lat, 50) * 1000, _pct(lat, 99) * 1000, replicas_before, monitor.current(),
                     start_t, time.time() - t0))
        for f in fails[:3]:
            say(f"  failure at c={c}: {f}")
    monitor.phase = "idle"
    time.sleep(args.settle)
    monitor.stop_event.set()
    monitor.join()

    say(f"{'conc':>4} {'sent':>5} {'ok':>5} {'fail':>4} {'wall s':>7} {'req/s':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'replicas':>9} {'t (s)':>12}")
    for c, sent, ok, failed, wall, rps, p50, p99, r0, r1, ts, te in rows:
        say(f"{c:>4} {sent:>5} {ok:>5} {failed:>4} {wall:>7.2f} {rps:>7.2f} {p50:>8.1f} {p99:>8.1f} "
              f"{f'{r0}->{r1}':>9} {f'{ts:.1f}-{te:.1f}':>12}")

    say("\nreplicas over time (t from deploy; changes only):")
    for t, running, starting, phase in monitor.samples:
        say(f"  t={t:6.1f}s  running={running}  starting={starting}  [{phase}]")
    second = next(((t, phase) for t, running, _, phase in monitor.samples if running >= 2), None)
    if second:
        say(f"\nsecond replica started: yes, running at t={second[0]:.1f}s (during {second[1]})")
    else:
        say("\nsecond replica started: no")
    say(f"failed requests: {total_failures}")
    say(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    serve.shutdown()
    ray.shutdown()
    tmp.cleanup()

    default_name = "serve_load_tiny.md" if args.checkpoint is None else "serve_load.md"
    out = Path(args.out or Path(__file__).parent / "results" / default_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = " ".join(["python bench/serve_load.py", *(argv if argv is not None else sys.argv[1:])])
    out.write_text(f"# Serve load test\n\nWritten by `{cmd}` on {time.strftime('%Y-%m-%d %H:%M:%S')}.\n\n"
                   "```\n" + "".join(report) + "```\n")
    print(f"\nreport written to {out}")
    return 0 if total_failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
