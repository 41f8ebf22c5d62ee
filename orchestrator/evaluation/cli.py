"""The ``hbat eval`` and ``hbat compare`` subcommands.

``register(subparsers)`` adds both to the ``hbat`` parser. Settings come from
an optional YAML file, then the flags, then ``key=value`` overrides.
"""

from __future__ import annotations

import sys
from pathlib import Path

_EVAL_FLAGS = {  # flag dest -> EvalConfig key
    "data": "data", "limit": "limit", "reward_model": "reward_model", "reference": "reference",
    "baseline": "baseline", "baseline_responses": "baseline_responses", "max_new_tokens": "max_new_tokens",
    "temperature": "temperature", "batch_size": "batch_size", "seed": "seed", "dtype": "dtype",
    "backend": "backend",
}


def _eval_config(args):
    from pydantic import ValidationError

    from hbat.orchestrator.config import ConfigError, _set_dotted, expand_path, parse_overrides, validation_message
    from hbat.orchestrator.evaluation.settings import EvalConfig

    from hbat.orchestrator.config import read_yaml_mapping

    tree: dict = {}
    if args.config:
        tree = read_yaml_mapping(args.config, "mapping")
        if "eval" in tree and isinstance(tree["eval"], dict):  # a compare config: use its eval section
            tree = tree["eval"]
    for dest, key in _EVAL_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            tree[key] = value
    if args.suites:
        tree["suites"] = "auto" if args.suites == "auto" else [s.strip() for s in args.suites.split(",") if s.strip()]
    if args.judge_url:
        tree["judge"] = {**tree.get("judge", {}), "url": args.judge_url}
        if args.judge_model:
            tree["judge"]["model"] = args.judge_model
        if args.judge_key_env:
            tree["judge"]["api_key_env"] = args.judge_key_env
    res = tree.setdefault("resources", {})
    if args.address:
        res["address"] = args.address
    if args.replicas or args.num_gpus is not None:
        for role in ("rollout", "reward", "kl"):
            node = res.setdefault(role, {})
            if args.num_gpus is not None:
                node["num_gpus"] = args.num_gpus
        if args.replicas:
            res["rollout"]["replicas"] = args.replicas
    if args.no_progress:
        tree["progress"] = False
    for key, value in parse_overrides(args.overrides):
        _set_dotted(tree, key, value)
    for key in ("data", "reward_model", "reference", "baseline", "baseline_responses"):
        if isinstance(tree.get(key), str):
            tree[key] = expand_path(tree[key], key)
    try:
        return EvalConfig.model_validate(tree)
    except ValidationError as exc:  # one line per key, as for training configs
        raise ConfigError(f"invalid eval settings:\n{validation_message(exc)}") from None


def _default_out(model: str) -> Path:
    p = Path(model)
    if p.name == "final" and (p.parent / "summary.json").exists():
        return p.parent / "eval"
    return Path("runs") / "eval" / (p.name or "model")


def _eval(args) -> int:
    from hbat.orchestrator.evaluation.evaluate import evaluate_model
    from hbat.orchestrator.evaluation.report import eval_markdown

    from hbat.orchestrator.config import expand_path
    from hbat.orchestrator.preflight import check_eval

    cfg = _eval_config(args)
    args.model = expand_path(args.model, "--model")
    check_eval(args.model, cfg)
    out = Path(args.out) if args.out else _default_out(args.model)
    result = evaluate_model(args.model, cfg, out_dir=out)
    print(eval_markdown(result.to_json()))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}, {out / 'responses.jsonl'}")
    return 0


def _compare(args) -> int:
    from hbat.orchestrator.evaluation.compare import load_compare_config, run_compare

    from hbat.orchestrator.preflight import check_compare

    cfg, train_tree = load_compare_config(args.config, args.overrides)
    check_compare(cfg, train_tree, args.resume, args.overwrite)
    if args.no_progress:
        cfg.eval.progress = False
        train_tree.setdefault("logging", {})["progress"] = False
    summary = run_compare(cfg, train_tree, resume=args.resume, overwrite=args.overwrite)
    print(summary["markdown"])
    out = Path(cfg.output_dir)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.json'}" + (
        f", {out / 'metrics.png'}, {out / 'curves.png'}, {out / 'tradeoff.png'}" if cfg.plots else ""))
    return 0


def register(subparsers) -> None:
    """Add ``eval`` and ``compare`` to the ``hbat`` command's subparsers."""
    e = subparsers.add_parser(
        "eval", help="evaluate a checkpoint or HF model on an eval set (reward, win rate, ROUGE, IFEval, KL, length)",
        description="Generate greedy answers with rollout actors and score them with metric suites. "
                    "Writes results.json, results.md and responses.jsonl.")
    e.add_argument("--model", required=True, help="checkpoint folder (e.g. runs/x/final), hub id or embedded name")
    e.add_argument("--config", help="YAML with eval settings (or a compare config: its eval section is used)")
    e.add_argument("--data",
                   help="eval set: JSONL/JSON/Parquet with prompt [, reference] [, instruction_id_list, kwargs]")
    e.add_argument("--suites", help="comma list of length,reward,winrate,judge,rouge,ifeval,kl,demo or 'auto' "
                                    "(default: every suite whose inputs are given, except demo and judge)")
    e.add_argument("--reward-model", dest="reward_model", help="reward model for the reward / winrate suites")
    e.add_argument("--reference", help="reference model for the kl suite (usually the starting model)")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--baseline", help="model whose responses are the opponent in win rates")
    g.add_argument("--baseline-responses", dest="baseline_responses", help="responses.jsonl of an earlier hbat eval")
    e.add_argument("--judge-url", dest="judge_url", help="OpenAI-compatible endpoint for the judge suite (…/v1)")
    e.add_argument("--judge-model", dest="judge_model", help="model name sent to the judge endpoint")
    e.add_argument("--judge-key-env", dest="judge_key_env", help="environment variable holding the judge API key "
                                                                  "(default OPENAI_API_KEY)")
    e.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    e.add_argument("--temperature", type=float, help="0 = greedy (default)")
    e.add_argument("--batch-size", dest="batch_size", type=int)
    e.add_argument("--limit", type=int, help="evaluate only the first N prompts")
    e.add_argument("--seed", type=int)
    e.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    e.add_argument("--backend", choices=["auto", "hf", "vllm"])
    e.add_argument("--replicas", type=int, help="rollout replicas")
    e.add_argument("--num-gpus", dest="num_gpus", type=float, help="GPUs per evaluation actor")
    e.add_argument("--address", help="Ray cluster address (default: local Ray)")
    e.add_argument("--out", help="output folder (default: <run>/eval for a run's final/, else runs/eval/<name>)")
    e.add_argument("--no-progress", dest="no_progress", action="store_true")
    e.add_argument("overrides", nargs="*", help="key=value settings, e.g. resources.rollout.replicas=2")
    e.set_defaults(func=_eval)

    c = subparsers.add_parser(
        "compare", help="train several schedules from the same start and compare them (table + plots)",
        description="Run every method (schedule x PPO/DPO) for every seed (and every value of the config's sweep: "
                    "key), evaluate each final checkpoint with the same suites, and write compare.md / compare.json / "
                    "metrics.png / curves.png / tradeoff.png.")
    c.add_argument("--config", required=True, help="compare YAML (see configs/compare_small.yaml)")
    c.add_argument("--resume", action="store_true", help="reuse finished runs in output_dir (the table lists them)")
    c.add_argument("--overwrite", action="store_true", help="delete output_dir first")
    c.add_argument("--no-progress", dest="no_progress", action="store_true")
    c.add_argument("overrides", nargs="*", help="key=value, e.g. seeds=[0,1,2] train.sft.steps_per_phase=4")
    c.set_defaults(func=_compare)


def main(argv: list[str] | None = None) -> int:
    """``python -m hbat.orchestrator.evaluation.cli eval ...``: the ``hbat`` command itself, so the module
    entry has the same error handling (exit 2 on bad input, a one-line note on Ctrl-C)."""
    from hbat.orchestrator.cli import main as hbat_main

    return hbat_main(argv)


if __name__ == "__main__":
    sys.exit(main())
