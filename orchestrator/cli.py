"""``hbat`` command line: train, train-rm, plan, build-pairs, generate, make-demo-data, eval, compare, serve."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _train(args) -> int:
    from hbat.orchestrator.config import load_config
    from hbat.orchestrator.driver import train

    from hbat.orchestrator.preflight import check_train, remove_run_folder

    cfg = load_config(args.config, args.overrides)
    check_train(cfg, resume=args.resume, overwrite=args.overwrite, run_folder=not args.train_rm_only)
    if args.overwrite:
        remove_run_folder(cfg.run_dir())
    summary = train(cfg, resume=args.resume) if not args.train_rm_only else _train_rm(cfg)
    print(json.dumps(summary, indent=2))
    return 0


def _train_rm(cfg) -> dict:
    from hbat.orchestrator.reward_stage import standalone_reward_model

    return {"reward_model": standalone_reward_model(cfg)}


def _generate(args) -> int:
    from hbat.orchestrator.config import expand_path
    from hbat.orchestrator.preflight import check_generate

    check_generate(args.model, args.backend, args.max_new_tokens, args.temperature)
    from hbat.actors.rollout import RolloutWorker
    from hbat.actors.sampling import SamplingSettings

    worker = RolloutWorker(expand_path(args.model, "--model"), backend=args.backend)
    sampling = SamplingSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens, n=1, seed=0)
    for prompt, outs in zip(args.prompt, worker.generate_text(args.prompt, sampling)):
        print(f"> {prompt}\n{outs[0]}\n")
    return 0


def _plan(args) -> int:
    from hbat.orchestrator.memory_plan import estimate, format_plan, load_plan_config

    cfg, source = load_plan_config(args.config, args.overrides, method=args.method)
    plan = estimate(cfg, args.gpu_memory_gb)
    if args.json:
        print(json.dumps({"source": source, **plan.to_json()}, indent=2, default=str))
    else:
        print(format_plan(plan, source))
    return 0


def _build_pairs(args) -> int:
    from hbat.orchestrator.pairs import build_pairs, load_build_config

    cfg = load_build_config(args.config, args.overrides)
    if args.no_progress:
        cfg.progress = False
    print(json.dumps(build_pairs(cfg, overwrite=args.overwrite), indent=2))
    return 0


def _make_demo(args) -> int:
    from hbat.orchestrator.demo_data import make_demo_data

    for name, path in make_demo_data(args.out, seed=args.seed).items():
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hbat", description="Ray-based RLHF with Hybrid Alignment Training")
    sub = p.add_subparsers(dest="command", required=True)

    from hbat.orchestrator.schedules import SCHEDULES

    t = sub.add_parser("train", help=f"run a schedule ({', '.join(SCHEDULES)})")
    t.add_argument("--config", required=True, help="YAML config (see configs/)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's latest complete checkpoint")
    t.add_argument("--overwrite", action="store_true",
                   help="delete the run folder's earlier run first (without it, a folder holding a run is refused)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. schedule.rounds=4 ppo.kl_coef=0.1")
    t.set_defaults(func=_train, train_rm_only=False)

    r = sub.add_parser("train-rm", help="train only the Bradley-Terry reward model on data.preference")
    r.add_argument("--config", required=True)
    r.add_argument("overrides", nargs="*")
    r.set_defaults(func=_train, train_rm_only=True, resume=False, overwrite=False)

    pl = sub.add_parser("plan", help="dry run: estimated memory per device and placement of a train or compare config",
                        description="Start no model and no Ray: print, per role, the estimated memory per device "
                                    "(weights, gradients, AdamW state, EWC anchors, activations, logits) and the "
                                    "placement bundles, and warn for every role that does not fit.")
    pl.add_argument("--config", required=True, help="training YAML, or a compare YAML (its train: section)")
    pl.add_argument("--gpu-memory-gb", dest="gpu_memory_gb", type=float,
                    help="memory of one device in GiB (default: resources.gpu_memory_gb, else 80)")
    pl.add_argument("--method", help="compare config: the method to plan (default: the one with the most roles)")
    pl.add_argument("--json", action="store_true", help="print the numbers as JSON (bytes)")
    pl.add_argument("overrides", nargs="*", help="key=value overrides, e.g. resources.policy.replicas=4")
    pl.set_defaults(func=_plan)

    b = sub.add_parser("build-pairs", help="preference pairs by contrast (PopAlign's six strategies), resumable")
    b.add_argument("--config", required=True, help="build-pairs YAML (see configs/popalign_demo.yaml)")
    b.add_argument("--overwrite", action="store_true", help="discard what output_dir holds and start afresh")
    b.add_argument("--no-progress", dest="no_progress", action="store_true")
    b.add_argument("overrides", nargs="*", help="key=value overrides, e.g. output_dir=runs/pairs limit=16")
    b.set_defaults(func=_build_pairs)

    g = sub.add_parser("generate", help="generate answers with a model or checkpoint")
    g.add_argument("--model", default="smollm2-135m")
    g.add_argument("--prompt", action="append", required=True)
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"])
    g.set_defaults(func=_generate)

    d = sub.add_parser("make-demo-data", help="write the built-in demo task (deterministic)")
    d.add_argument("--out", default="data/demo")
    d.add_argument("--seed", type=int, default=1234)
    d.set_defaults(func=_make_demo)

    from hbat.deploy.cli import register as register_serve

    register_serve(sub)
    from hbat.orchestrator.evaluation.cli import register as register_eval

    register_eval(sub)
    return p


# what an interrupted command left behind, and how to go on from it
_RESUME_HINTS = {
    "train": " The latest complete checkpoint is on disk; add --resume to the same command to continue from it.",
    "compare": " Finished runs are on disk; add --resume to the same command to reuse them.",
    "build-pairs": " The pairs built so far are on disk; the same command continues from them.",
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    from hbat.orchestrator.config import ConfigError
    from hbat.orchestrator.data import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is a user's decision, not a crash: no traceback. What was finished
        # (checkpoints, finished compare runs, built pairs) is already on disk.
        print(f"hbat {args.command}: interrupted.{_RESUME_HINTS.get(args.command, '')}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
