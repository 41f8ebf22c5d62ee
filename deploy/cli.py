"""``hbat serve``: put a policy and/or reward checkpoint online with Ray Serve.

    hbat serve --checkpoint runs/demo/final [--reward-checkpoint runs/rm/final]
               [--host 127.0.0.1 --port 8000] [--api-key-env HBAT_API_KEY | --api-key-file FILE]
               [--num-replicas N | --autoscale MIN,MAX [--target-ongoing-requests 2]]
               [--backend auto|transformers|vllm] [--address auto] [--no-blocking]

The policy app is mounted at ``/`` (``/v1/chat/completions``,
``/v1/completions``, ``/v1/models``) and the reward app at ``/v1/reward``.
The same apps deploy from a Serve config file (``deploy/serve_config.yaml``)
with ``serve run`` / ``serve deploy``; this command only builds the builder
args from flags and calls ``serve.run``.

``register(subparsers)`` adds the subcommand; ``run(args) -> int`` runs it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

POLICY_APP, REWARD_APP = "policy", "reward"
POLICY_ROUTE, REWARD_ROUTE = "/", "/v1/reward"


@dataclass
class AppSpec:
    name: str
    route_prefix: str
    builder: str  # "openai" | "reward"
    args: dict[str, Any]

    def build(self):
        if self.builder == "openai":
            from hbat.deploy.openai_app import build_app
        else:
            from hbat.deploy.reward_app import build_app
        return build_app(self.args)


def _autoscale(value: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--autoscale takes MIN,MAX (e.g. 1,4), got '{value}'") from None
    if lo < 0 or hi < 1 or lo > hi:
        raise argparse.ArgumentTypeError(f"--autoscale needs 0 <= MIN <= MAX and MAX >= 1, got '{value}'")
    return lo, hi


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{value}'")
    return n


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve a policy (OpenAI-compatible API) and/or a reward model with Ray Serve",
        description="Put a policy (OpenAI-compatible API) and/or a reward model online with Ray Serve. "
        "The policy answers at /v1/chat/completions, /v1/completions and /v1/models; the reward "
        "model at POST /v1/reward. See deploy/README.md.",
    )
    p.add_argument("--checkpoint", help="policy checkpoint: RUN_DIR/final, any HF folder, hub id or smollm2-135m")
    p.add_argument("--reward-checkpoint", help="reward-model checkpoint, served at POST /v1/reward")
    p.add_argument("--model-name", help="model id for clients (default: last two parts of the checkpoint path)")
    p.add_argument("--reward-model-name", help="model id of the reward model")
    p.add_argument("--weight-version", help="weight version reported in /v1/models and system_fingerprint")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 to listen on all interfaces)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", help="Ray cluster address (e.g. auto); default: start a local Ray")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--api-key-env", help="require 'Authorization: Bearer <key>', key read from this env var")
    keys.add_argument("--api-key-file", help="require a key; keys read from this file (one per line)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--num-replicas", type=_positive_int, help="fixed number of replicas per model (default 1)")
    scale.add_argument("--autoscale", type=_autoscale, metavar="MIN,MAX", help="Serve autoscaling between MIN and MAX")
    p.add_argument("--target-ongoing-requests", type=float, default=2.0,
                   help="autoscaling target of in-flight requests per replica (default 2)")
    p.add_argument("--replica-cpus", type=float, default=None,
                   help="CPUs per replica (default: 1 on a cluster, 0.5 locally so two fit on 2 cores)")
    p.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per transformers replica")
    p.add_argument("--backend", choices=["auto", "transformers", "vllm"], default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens a request may ask for")
    p.add_argument("--max-batch", type=int, default=None, help="largest number of inputs per /v1/reward request")
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest request body (413 above)")
    p.add_argument("--max-request-tokens", type=int, default=None,
                   help="largest n x (prompt + max_tokens) of one request (default 8192; 400 above): "
                        "bounds its memory, see deploy/README.md")
    p.add_argument("--max-concurrent-tokens", type=int, default=None,
                   help="the same summed over a replica's running requests (default 32768; 429 above)")
    p.add_argument("--blocking", action=argparse.BooleanOptionalAction, default=True,
                   help="keep serving until Ctrl-C (default); --no-blocking returns once the apps are up")
    p.set_defaults(func=run)
    return p


def _check_checkpoint(path: str, local: bool) -> str:
    """Absolute path for local folders (replicas do not share our cwd);
    embedded names and hub ids pass; a missing local path is an error."""
    from hbat.models import EMBEDDED_MODELS

    if path in EMBEDDED_MODELS:
        return path
    path = os.path.expanduser(os.path.expandvars(path))
    if os.path.exists(path):  # a relative path with one slash that exists here is a path, not a hub id
        return os.path.abspath(path)
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if looks_like_hub_id or not local:
        return path  # a hub id, or a path that exists on the cluster's nodes
    raise FileNotFoundError(f"checkpoint '{path}' does not exist")


def app_specs(args: argparse.Namespace) -> list[AppSpec]:
    """Builder args for the policy and reward apps from the parsed flags."""
    if not args.checkpoint and not args.reward_checkpoint:
        raise ValueError("give --checkpoint and/or --reward-checkpoint")
    local = args.address is None
    cpus = args.replica_cpus if args.replica_cpus is not None else (0.5 if local else 1.0)
    common: dict[str, Any] = {
        "dtype": args.dtype,
        "device": args.device,
        "ray_actor_options": {"num_cpus": cpus, **({"num_gpus": args.replica_gpus} if args.replica_gpus else {})},
        "api_key_env": args.api_key_env,
        "api_key_file": os.path.abspath(args.api_key_file) if args.api_key_file and local else args.api_key_file,
    }
    if args.weight_version is not None:
        version = args.weight_version
        common["weight_version"] = int(version) if str(version).isdigit() else version
    if args.autoscale:
        lo, hi = args.autoscale
        common["autoscaling_config"] = {
            "min_replicas": lo,
            "initial_replicas": max(lo, 1),
            "max_replicas": hi,
            "target_ongoing_requests": args.target_ongoing_requests,
        }
    else:
        common["num_replicas"] = args.num_replicas or 1
    limits = {k: v for k, v in (("max_tokens", args.max_tokens), ("max_batch", args.max_batch),
                                ("max_body_bytes", args.max_body_bytes),
                                ("max_request_tokens", getattr(args, "max_request_tokens", None)),
                                ("max_concurrent_tokens", getattr(args, "max_concurrent_tokens", None)))
              if v is not None}
    if limits:
        common["limits"] = limits
    specs = []
    if args.checkpoint:
        specs.append(AppSpec(POLICY_APP, POLICY_ROUTE, "openai", {
            **common, "checkpoint": _check_checkpoint(args.checkpoint, local),
            "model_name": args.model_name, "backend": args.backend,
        }))
    if args.reward_checkpoint:
        specs.append(AppSpec(REWARD_APP, REWARD_ROUTE, "reward", {
            **common, "checkpoint": _check_checkpoint(args.reward_checkpoint, local),
            "model_name": args.reward_model_name,
        }))
    return specs


def run(args: argparse.Namespace) -> int:
    from hbat.orchestrator.config import ConfigError
    from hbat.orchestrator.preflight import check_serve

    try:
        if not args.checkpoint and not args.reward_checkpoint:
            raise ValueError("give --checkpoint and/or --reward-checkpoint")
        check_serve(args)  # before Ray: checkpoints, key source, port (a replica would fail far away)
        specs = app_specs(args)
        from hbat.deploy.settings import Limits

        Limits(**specs[0].args.get("limits", {}))
    except (ValueError, FileNotFoundError, ConfigError) as exc:
        print(f"hbat serve: error: {_one_line(exc)}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    if not ray.is_initialized():
        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(include_dashboard=False)
    if args.address is None:
        # convert an embedded default once here, not in every replica at once
        from hbat.models import resolve_model_path

        for spec in specs:
            resolve_model_path(spec.args["checkpoint"])
    try:
        apps = [(spec, spec.build()) for spec in specs]  # after ray.init: backend 'auto' looks at the cluster
    except ValueError as exc:
        print(f"hbat serve: error: {exc}", file=sys.stderr)
        return 2
    serve.start(http_options={"host": args.host, "port": args.port})
    try:
        # all apps at once: their replicas start in parallel
        serve.run_many([serve.RunTarget(application, name=spec.name, route_prefix=spec.route_prefix)
                        for spec, application in apps])
    except Exception as exc:  # noqa: BLE001 - a replica failed to start: say why, exit non-zero
        print(f"hbat serve: error: deployment failed: {exc}", file=sys.stderr)
        return 1

    base = f"http://{args.host}:{args.port}"
    for spec in specs:
        if spec.builder == "openai":
            print(f"policy '{spec.args.get('model_name') or _name(spec)}': {base}/v1  "
                  "(chat/completions, completions, models)")
        else:
            print(f"reward '{spec.args.get('model_name') or _name(spec)}': POST {base}{REWARD_ROUTE}")
    if args.api_key_env or args.api_key_file:
        print("API key required: Authorization: Bearer <key>")
    sys.stdout.flush()
    if not args.blocking:
        return 0

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print("serving; Ctrl-C to stop", flush=True)
    while not stop.wait(1.0):
        pass
    if args.address is None:
        serve.shutdown()  # our own local Ray: take everything down
    else:
        for spec in specs:  # a shared cluster: remove only what we deployed
            serve.delete(spec.name)
    return 0


def _one_line(exc: Exception) -> str:
    """pydantic's multi-line ValidationError as one line."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join((f"--{'-'.join(str(x) for x in e['loc']).replace('_', '-')}: " if e["loc"] else "")
                         + e["msg"].removeprefix("Value error, ") for e in exc.errors())
    return str(exc)


def _name(spec: AppSpec) -> str:
    from hbat.deploy.settings import default_model_name

    return default_model_name(spec.args["checkpoint"])


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m hbat.deploy.cli serve ...``) until the
    ``hbat`` CLI wires :func:`register` in."""
    parser = argparse.ArgumentParser(prog="hbat")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    ns = parser.parse_args(argv)
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
