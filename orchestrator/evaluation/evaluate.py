"""``hbat eval``: one model on one eval set, with the chosen metric suites.

load + validate the eval set -> check every chosen suite has its inputs ->
baseline responses (a model to run, or a responses file) -> generate with
rollout actors -> run the suites -> results.json, results.md, responses.jsonl.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from hbat.models.atomic import atomic_write_bytes
from hbat.orchestrator.config import ConfigError
from hbat.orchestrator.data import DataError
from hbat.orchestrator.evaluation.actors import EvalActors
from hbat.orchestrator.ray_runtime import ensure_ray
from hbat.orchestrator.evaluation.evalset import EvalExample, fingerprint, load_eval_set
from hbat.orchestrator.evaluation.generation import Generations, generate
from hbat.orchestrator.evaluation.report import eval_markdown
from hbat.orchestrator.evaluation.settings import EvalConfig
from hbat.orchestrator.evaluation.stats import Metric, summarize
from hbat.orchestrator.evaluation.suites import Context, select_suites

@dataclass
class EvalResult:
    model: str
    metrics: dict[str, Metric]  # per-example values
    summary: dict[str, dict]  # mean, CI, std, n per metric
    responses: list[str]
    info: dict
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"model": self.model, **self.info, "metrics": self.summary,
                "extra": {k: v for k, v in self.extra.items() if k not in ("reward_scores", "baseline_reward_scores")}}


def read_responses(path: str | Path, examples: list[EvalExample]) -> list[str]:
    """Responses from an earlier ``responses.jsonl``; order and prompts must match the eval set."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if len(rows) != len(examples):
        raise DataError(f"{len(rows)} responses for an eval set of {len(examples)} prompts", path=str(path))
    for i, (row, ex) in enumerate(zip(rows, examples)):
        if not isinstance(row.get("response"), str):
            raise DataError("expected a string", path=str(path), line=i + 1, field="response")
        if "prompt" in row and row["prompt"] != ex.prompt:
            raise DataError("prompt differs from the eval set's prompt at this position (another eval set?)",
                            path=str(path), line=i + 1, field="prompt")
    return [r["response"] for r in rows]


def evaluate_model(model: str, cfg: EvalConfig, *, examples: list[EvalExample] | None = None,
                   baseline_responses: list[str] | None = None, out_dir: str | Path | None = None,
                   name: str | None = None, actors: EvalActors | None = None,
                   baseline_name: str | None = None) -> EvalResult:
    """Evaluate ``model``. ``actors``: evaluation actors kept alive by the caller
    (``hbat compare``); they are pointed at ``model`` first. Without them, the
    actors are started here and stopped at the end."""
    t0 = time.time()
    if examples is None:
        if not cfg.data:
            raise ConfigError("no eval set: give --data (eval data)")
        examples = load_eval_set(cfg.data, cfg.limit)
    has_baseline = baseline_responses is not None or bool(cfg.baseline or cfg.baseline_responses)
    probe = Context(model, examples, Generations([], [], []), cfg, baseline=[] if has_baseline else None)
    suites = select_suites(cfg.suites, probe)  # fail on a missing input before any model loads
    names = {s.name for s in suites}
    started = ensure_ray(cfg.resources.address, cfg.resources.num_cpus, log_to_driver=False)
    own = actors is None
    ctx = None
    try:
        if own:  # all actors start at once; their start-up overlaps the baseline's generation
            actors = EvalActors(model, cfg, reward=bool(names & {"reward", "winrate"}), kl="kl" in names)
        baseline = baseline_responses
        if baseline is None and cfg.baseline_responses:
            baseline = read_responses(cfg.baseline_responses, examples)
        if baseline is None and cfg.baseline:
            desc = f"generate {_short(cfg.baseline)} (baseline)"
            baseline = generate(cfg.baseline, examples, cfg, desc=desc).responses
        if baseline is not None and len(baseline) != len(examples):
            raise ValueError(f"{len(baseline)} baseline responses for {len(examples)} prompts")
        actors.load(model)
        gen = generate(model, examples, cfg, desc=f"generate {name or _short(model)}", actors=actors.rollout)
        ctx = Context(model, examples, gen, cfg, baseline=baseline, services=actors.services())
        metrics: dict[str, Metric] = {}
        timings = {"generate_s": round(time.time() - t0, 1)}
        for suite in suites:
            ts = time.time()
            metrics.update(suite.run(ctx))
            timings[f"{suite.name}_s"] = round(time.time() - ts, 1)
    finally:
        for s in (ctx.owned.values() if ctx is not None else []):
            s.close()
        if own and actors is not None:
            actors.close()
        if started:
            ray.shutdown()
    summary = {k: summarize(m, cfg.n_boot, cfg.seed) for k, m in metrics.items()}
    info = {"name": name or _short(model), "eval_set": cfg.data, "eval_set_fingerprint": fingerprint(examples),
            "n_examples": len(examples), "suites": [s.name for s in suites],
            "baseline": cfg.baseline or cfg.baseline_responses or (
                (baseline_name or "given") if baseline_responses is not None else None),
            "reward_model": cfg.reward_model, "reference": cfg.reference,
            "decoding": {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                         "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed},
            "bootstrap": {"n_boot": cfg.n_boot, "seed": cfg.seed, "ci": 0.95},
            "timings": {**timings, "total_s": round(time.time() - t0, 1)}}
    result = EvalResult(model, metrics, summary, gen.responses, info, ctx.extra)
    if out_dir is not None:
        write_result(result, examples, gen, baseline, Path(out_dir))
    return result


def write_result(result: EvalResult, examples: list[EvalExample], gen: Generations, baseline: list[str] | None,
                 out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ex in enumerate(examples):
        row = {"index": i, "prompt": ex.prompt, "response": gen.responses[i], "tokens": gen.tokens[i],
               "truncated": gen.truncated[i]}
        if ex.references:
            row["references"] = ex.references
        if baseline is not None:
            row["baseline_response"] = baseline[i]
        row["metrics"] = {k: m.values[i] for k, m in result.metrics.items()}
        weighted = {k: m.weights[i] for k, m in result.metrics.items() if m.weights is not None}
        if weighted:
            row["weights"] = weighted
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_bytes(out / "responses.jsonl", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(out / "results.json", json.dumps(result.to_json(), indent=2).encode())
    atomic_write_bytes(out / "results.md", eval_markdown(result.to_json()).encode())


def read_metrics(out: Path) -> tuple[dict[str, Metric], list[str]]:
    """Per-example metrics and responses back from a written ``responses.jsonl``."""
    rows = [json.loads(line) for line in (Path(out) / "responses.jsonl").read_text().splitlines() if line.strip()]
    names = list(rows[0]["metrics"]) if rows else []
    metrics = {}
    for k in names:
        weights = [r.get("weights", {}).get(k) for r in rows]
        metrics[k] = Metric([r["metrics"].get(k) for r in rows],
                            None if all(w is None for w in weights) else [float(w or 0.0) for w in weights])
    return metrics, [r["response"] for r in rows]


def _short(model: str) -> str:
    p = Path(model)
    if p.name in ("final",) and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name or model
