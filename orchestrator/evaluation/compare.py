"""``hbat compare``: the HBAT paper's comparison, run end to end by one command.

For every seed and every method (a schedule, with PPO or DPO), train from the
same starting model on the same data with the same step settings — only
``schedule.name``, ``schedule.preference``, ``run.seed`` and ``run.name``
change — then evaluate the final checkpoint with the same suites. One reward
model (given, or trained once before anything else) is shared: it is the
reward of every PPO run, the per-phase ``eval/reward`` probe of every run,
and the judge of the reward and win-rate metrics, so no method is scored by a
different judge. Win rates are against the baseline method's responses of
the same seed (default ``sft_only``), or against the untrained model
(``baseline: start``).

With ``sweep:`` (``sweep.py``) each method also runs once per value of a
training-config key that can change it (``hbat-dpo[ewc.strength=10]``), and
``tradeoff.png`` (``tradeoff.py``) places every method x setting on an
instruction-metric vs preference-metric plane.

Outputs in ``output_dir``: ``runs/<method>/seed<k>/`` (the training run and
its ``eval/``; a swept run: ``runs/<method>/<key>=<value>/seed<k>/``),
``compare.json`` (all numbers, per seed), ``compare.md`` (the table, also
printed), ``metrics.png`` (bars with error bars across seeds), ``curves.png``
(training curves with phase boundaries) and ``tradeoff.png``.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import ray
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from hbat.models.atomic import atomic_write_bytes
from hbat.orchestrator.config import ConfigError, Section, _resolve_relative_paths, _set_dotted, parse_overrides, \
    read_yaml_mapping, validate_config, validation_message
from hbat.orchestrator.evaluation.actors import EvalActors
from hbat.orchestrator.evaluation.evalset import load_eval_set
from hbat.orchestrator.evaluation.evaluate import evaluate_model, read_metrics
from hbat.orchestrator.evaluation.report import compare_markdown
from hbat.orchestrator.evaluation.settings import EvalConfig
from hbat.orchestrator.evaluation.stats import paired_seed_bootstrap, seed_bootstrap
from hbat.orchestrator.evaluation.sweep import SweepRun, check_sweep, expand, flatten, folder, method_of
from hbat.orchestrator.evaluation.tradeoff import TradeoffConfig, tradeoff_points
from hbat.orchestrator.ray_runtime import ensure_ray
from hbat.orchestrator.reward_stage import standalone_reward_model
from hbat.orchestrator.schedules import SCHEDULES
from hbat.orchestrator.steps import PREFERENCE_STEPS

log = logging.getLogger("hbat.compare")

SCHEDULE_NAMES = tuple(SCHEDULES)
DEFAULT_METHODS = ["sft_only"] + [f"{s}-{p}" for p in PREFERENCE_STEPS for s in SCHEDULE_NAMES if s != "sft_only"]
DEFAULT_TABLE = ["reward/score", "winrate/rm", "winrate/judge", "demo/exact", "demo/style", "rouge/rougeL",
                 "ifeval/prompt_strict", "kl/seq", "length/tokens"]
START = "start"
BASELINE_SUITES = ("winrate", "judge")


class MethodSpec(Section):
    name: str
    schedule: str
    preference: str = "ppo"

    @model_validator(mode="after")
    def _known(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{self.schedule}' (known: {', '.join(SCHEDULES)})")
        if self.preference not in PREFERENCE_STEPS:
            raise ValueError(f"unknown preference algorithm '{self.preference}' (known: {', '.join(PREFERENCE_STEPS)})")
        return self
    overrides: dict[str, Any] = {}  # dotted training-config keys for this method only


def parse_method(item: str | dict) -> MethodSpec:
    """``"sft_only"``, ``"hbat-ppo"``, ``"two_stage-dpo"``... or a full mapping."""
    if isinstance(item, dict):
        return MethodSpec.model_validate(item)
    sched, _, pref = item.partition("-")
    if sched not in SCHEDULE_NAMES or (pref and pref not in PREFERENCE_STEPS) or (not pref and sched != "sft_only"):
        raise ValueError(f"method '{item}': expected 'sft_only' or '<schedule>-<{'|'.join(PREFERENCE_STEPS)}>' "
                         f"with schedule in {', '.join(SCHEDULE_NAMES)}")
    return MethodSpec(name=item, schedule=sched, preference=pref or "ppo")


class CompareConfig(Section):
    name: str = "compare"
    output_dir: str = "runs/compare"
    train_config: str | None = None  # a training YAML; ``train`` is merged over it
    train: dict[str, Any] = {}  # training config tree (the same keys as `hbat train` configs)
    demo_data: str | None = None  # the built-in demo task: written here if absent; fills unset train.data keys
    methods: list[str | MethodSpec] = DEFAULT_METHODS
    seeds: list[int] = Field([0], min_length=1)
    baseline: str | None = "sft_only"  # a method name, "start" (the untrained model) or null
    include_start: bool = True  # evaluate the untrained starting model as a row too
    reward_model: str | None = None  # shared RM; null -> trained once on train.data.preference
    eval: EvalConfig = EvalConfig()
    table: list[str] = DEFAULT_TABLE  # metric columns (absent ones are dropped)
    contrasts: list[tuple[str, str]] | None = None  # null -> hbat-X vs two_stage-X for each X run
    # dotted train-config key -> values: each method x setting x seed is a run (sweep.py)
    sweep: dict[str, list[Any]] = {}
    tradeoff: TradeoffConfig = TradeoffConfig()  # the axes of tradeoff.png
    # held-out prompts each training run answers after every phase (its eval/reward curve): the first N of
    # train.data.eval_prompts; 0 = no per-phase probe (faster; curves then show the SFT loss only); null = all
    probe_prompts: int | None = Field(16, ge=0)
    plots: bool = True
    keep_checkpoints: bool = False  # resumable training checkpoints of finished runs (large: optimizer + EWC anchors)
    keep_final: bool = True  # each run's final HF checkpoint (deleted after evaluation when false)

    @field_validator("sweep", mode="before")
    @classmethod
    def _dotted(cls, v):
        """``{ewc: {strength: [..]}}`` (and the override ``sweep.ewc.strength=[..]``) as ``{ewc.strength: [..]}``."""
        return flatten(v) if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _check(self):
        specs = self.specs()
        names = [m.name for m in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"methods: duplicate names in {names}")
        if START in names:
            raise ValueError("methods: 'start' is reserved for the untrained model")
        # a method or one of its sweep labels (whether that label is run is known after expansion)
        if self.baseline not in (None, START) and method_of(self.baseline) not in names:
            raise ValueError(f"baseline '{self.baseline}' is not one of the methods {names}")
        for a, b in self.contrasts or []:
            for x in (a, b):
                if method_of(x) not in names + [START]:
                    raise ValueError(f"contrasts: '{x}' is not one of the methods")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: duplicates")
        problems = check_sweep(self.sweep)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def specs(self) -> list[MethodSpec]:
        return [m if isinstance(m, MethodSpec) else parse_method(m) for m in self.methods]

    def contrast_pairs(self) -> list[tuple[str, str]]:
        if self.contrasts is not None:
            return [tuple(c) for c in self.contrasts]
        names = {m.name for m in self.specs()}
        return [(f"hbat-{p}", f"two_stage-{p}") for p in ("ppo", "dpo")
                if f"hbat-{p}" in names and f"two_stage-{p}" in names]


# ------------------------------------------------------------------ config loading
def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_compare_config(path: str | Path | None, overrides: list[str] | None = None) -> tuple[CompareConfig, dict]:
    """(validated compare config, resolved training tree). Paths in the files
    are relative to the working directory when they exist there, else to the
    file's folder (as for training configs)."""
    tree: dict = {}
    base = Path(".")
    if path is not None:
        tree = read_yaml_mapping(path, "mapping")
        base = Path(path).parent
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    if isinstance(tree.get("sweep"), dict):  # one line per swept key, named sweep.<key> (the model says it too)
        problems = check_sweep(flatten(tree["sweep"]))
        if problems:
            raise ConfigError(f"invalid compare config {path or '<defaults>'}:\n  " + "\n  ".join(problems))
    try:
        cfg = CompareConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"invalid compare config {path or '<defaults>'}:\n{validation_message(exc)}") from None
    train_tree: dict = {}
    if cfg.train_config:
        tp = Path(cfg.train_config)
        if not tp.is_absolute() and not tp.exists() and (base / tp).exists():
            tp = base / tp
        if not tp.is_file():
            raise ConfigError(f"train_config: file not found: {cfg.train_config}")
        train_tree = read_yaml_mapping(tp)
        _resolve_relative_paths(train_tree, tp.parent)
    train_tree = _merge(train_tree, cfg.train)
    if cfg.demo_data:  # the demo task's files fill whatever data keys are not set
        data = train_tree.setdefault("data", {})
        for key in ("sft", "preference", "prompts", "eval_sft", "eval_prompts"):
            data.setdefault(key, str(Path(cfg.demo_data) / f"{key}.jsonl"))
    _resolve_relative_paths(train_tree, base)
    if cfg.eval.data and not Path(cfg.eval.data).exists() and (base / cfg.eval.data).exists():
        cfg.eval.data = str(base / cfg.eval.data)
    return cfg, train_tree


# ------------------------------------------------------------------ the run
class Comparison:
    def __init__(self, cfg: CompareConfig, train_tree: dict, resume: bool = False, overwrite: bool = False):
        self.cfg, self.base_tree = cfg, train_tree
        self.out = Path(cfg.output_dir)
        self.resume = resume
        if self.out.exists() and any(self.out.iterdir()):
            if overwrite:
                shutil.rmtree(self.out)
            elif not resume:
                raise ConfigError(f"output_dir {self.out} is not empty: pass --resume to reuse its finished runs "
                                  "(the table says which) or --overwrite to start afresh")
        self.specs = cfg.specs()
        self.points: list[SweepRun] = [SweepRun(s) for s in self.specs]  # methods x settings (expand_runs)
        self.baseline_label = cfg.baseline
        self.contrast_labels = [tuple(c) for c in cfg.contrast_pairs()]
        self.reused: list[str] = []
        self.runs: list[dict] = []
        self._actors: EvalActors | None = None

    @property
    def actors(self) -> EvalActors:
        """One set of evaluation actors for the whole comparison, started on first use."""
        if self._actors is None:
            suites = self.cfg.eval.suites
            wants = (lambda *names: suites == "auto" or any(n in suites for n in names))
            self._actors = EvalActors(self.start_model, self._eval_cfg(True),
                                      reward=bool(self.rm) and wants("reward", "winrate"), kl=wants("kl"))
        return self._actors

    # -- setup
    def prepare(self) -> None:
        if self.cfg.demo_data:
            from hbat.orchestrator.demo_data import make_demo_data

            if not (Path(self.cfg.demo_data) / "sft.jsonl").exists():
                log.info("writing the demo task to %s", self.cfg.demo_data)
                make_demo_data(self.cfg.demo_data)
        data = self.base_tree.setdefault("data", {})
        if not self.cfg.eval.data:
            self.cfg.eval.data = data.get("eval_prompts")
        if not self.cfg.eval.data:
            raise ConfigError("no eval set: set eval.data (or train.data.eval_prompts)")
        if data.get("eval_prompts") and self.cfg.probe_prompts is not None:
            if self.cfg.probe_prompts == 0:
                data.pop("eval_prompts")
            else:
                from hbat.orchestrator.data import iter_records

                probe = self.out / "probe_prompts.jsonl"
                self.out.mkdir(parents=True, exist_ok=True)
                rows = [r.record for r in iter_records(data["eval_prompts"])][: self.cfg.probe_prompts]
                atomic_write_bytes(probe, "".join(json.dumps(r) + "\n" for r in rows).encode())
                data["eval_prompts"] = str(probe)
        # the same validation `hbat train` does, once per run, before anything starts
        self.expand_runs()
        self.examples = load_eval_set(self.cfg.eval.data, self.cfg.eval.limit)
        self.start_model = self.base_tree.get("model", {}).get("policy", "smollm2-135m")
        self.reference = self.base_tree.get("model", {}).get("reference") or self.start_model

    def expand_runs(self) -> list[SweepRun]:
        """Methods x sweep settings (``sweep.py``; every run's training config
        validated), and the baseline and contrasts resolved to run labels.
        Needs no data, Ray or model: it runs before anything starts."""
        for spec in self.specs:  # the unswept trees first: their errors name the method alone
            self._train_config(spec, self.cfg.seeds[0], reward="<shared>")
        self.points = expand(self.specs, self.cfg.sweep,
                             lambda spec, setting: self._train_config(spec, self.cfg.seeds[0], "<shared>", setting))
        for p in self.points:  # a grid's combinations (one key's values are validated by expand)
            self._train_config(p.method, self.cfg.seeds[0], reward="<shared>", setting=p.setting)
        labels = [p.label for p in self.points]
        b = self.cfg.baseline
        if b not in (None, START):
            found = self._labels_of(b)
            if len(found) > 1:
                raise ConfigError(f"baseline '{b}' runs once per sweep setting ({', '.join(found)}): name one of "
                                  "these runs as the baseline")
            if not found:
                raise ConfigError(f"baseline '{b}' is not a run of this comparison (runs: {', '.join(labels)})")
            self.baseline_label = found[0]
        self.contrast_labels = [pair for a, b in self.cfg.contrast_pairs() for pair in self._contrast_runs(a, b)]
        return self.points

    def run_order(self) -> list[tuple[SweepRun, int]]:
        """Every (method x setting, seed) run in training order: seed by seed,
        the baseline's run first (its responses are the others' opponent)."""
        order = sorted(self.points, key=lambda p: p.label != self.baseline_label)
        return [(p, seed) for seed in self.cfg.seeds for p in order]

    def _labels_of(self, name: str) -> list[str]:
        """A run label itself, or every run of a method."""
        if name == START:
            return [START]
        exact = [p.label for p in self.points if p.label == name]
        return exact or [p.label for p in self.points if p.method.name == name]

    def _contrast_runs(self, a: str, b: str) -> list[tuple[str, str]]:
        """A contrast of methods as contrasts of runs: each run of one side against
        the other side's single run, or (both swept) the runs with the same setting."""
        la, lb = self._labels_of(a), self._labels_of(b)
        for name, found in ((a, la), (b, lb)):
            if not found:
                raise ConfigError(f"contrasts: '{name}' is not a run of this comparison "
                                  f"(runs: {', '.join(p.label for p in self.points)})")
        if len(la) > 1 and len(lb) > 1:
            setting = {p.label: p.setting for p in self.points}
            return [(x, y) for x in la for y in lb if setting[x] == setting[y]]
        return [(x, y) for x in la for y in lb if x != y]

    def _train_config(self, spec: MethodSpec, seed: int, reward: str | None, setting: dict | None = None):
        """One run's training config: the shared tree, the method's overrides, then the sweep setting."""
        tree = copy.deepcopy(self.base_tree)
        for key, value in spec.overrides.items():
            _set_dotted(tree, key, value)
        for key, value in (setting or {}).items():
            _set_dotted(tree, key, copy.deepcopy(value))
        out_dir = self.out / "runs" / spec.name
        if setting:
            out_dir = out_dir / folder(setting)
        tree.setdefault("schedule", {}).update(name=spec.schedule, preference=spec.preference)
        tree.setdefault("run", {}).update(name=f"seed{seed}", output_dir=str(out_dir), seed=seed)
        if reward is not None:
            tree.setdefault("model", {})["reward"] = reward
        name = SweepRun(spec, setting or {}).label
        try:
            return validate_config(tree, f"method {name}")
        except ConfigError as exc:
            where = f"method '{spec.name}'"
            if setting:
                where += " with sweep setting " + ", ".join(f"sweep.{k}={v!r}" for k, v in setting.items())
            raise ConfigError(f"{exc}\n(compare: the training tree of {where})") from None

    def shared_reward_model(self) -> str | None:
        if self.cfg.reward_model:
            return self.cfg.reward_model
        needs = any(s.preference == "ppo" and s.schedule != "sft_only" for s in self.specs) or any(
            k in self.cfg.eval.suites for k in ("reward", "winrate")) or self.cfg.eval.suites == "auto"
        if not needs or not self.base_tree.get("data", {}).get("preference"):
            return None
        folder = self.out / "reward_model" / "reward_model"
        if (folder / "config.json").exists() and self.resume:
            self.reused.append("reward_model")
            return str(folder)
        return standalone_reward_model(self._rm_config(), tensorboard=False)

    def _rm_config(self):
        tree = copy.deepcopy(self.base_tree)
        tree.setdefault("schedule", {}).update(name="two_stage", preference="ppo")
        tree.setdefault("run", {}).update(name="reward_model", output_dir=str(self.out), seed=self.cfg.seeds[0])
        tree.setdefault("model", {})["reward"] = None
        if not tree.get("data", {}).get("prompts"):
            tree["data"]["prompts"] = tree["data"]["preference"]  # only to pass validation; never read
        return validate_config(tree, "reward model")

    # -- one method, one seed
    def run_one(self, point: SweepRun, seed: int, baseline: list[str] | None) -> tuple[dict, list[str]]:
        from hbat.orchestrator.driver import train

        spec, name = point.method, point.label
        cfg = self._train_config(spec, seed, self.rm, point.setting)
        run_dir = cfg.run_dir()
        eval_dir = run_dir / "eval"
        ident = {"label": name, "method": spec.name, "setting": point.setting, "seed": seed, "run_dir": str(run_dir)}
        if self.resume and (run_dir / "summary.json").exists() and (eval_dir / "responses.jsonl").exists():
            self.reused.append(f"{name}/seed{seed}")
            metrics, responses = read_metrics(eval_dir)
            info_file = run_dir / "compare_run.json"
            info = json.loads(info_file.read_text()) if info_file.exists() else {}
            return {**ident, "metrics": metrics, "reused": True, **info}, responses
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a run cut off before it finished: start it again
        t0 = time.time()
        summary = train(cfg)
        train_s = time.time() - t0
        t1 = time.time()
        opponent = baseline if name != self.baseline_label else None
        res = evaluate_model(summary["final_checkpoint"], self._eval_cfg(opponent is not None), examples=self.examples,
                             baseline_responses=opponent, out_dir=eval_dir, name=f"{name} seed {seed}",
                             actors=self.actors, baseline_name=self._baseline_name(seed))
        info = {"train_s": round(train_s, 1), "eval_s": round(time.time() - t1, 1),
                "final": summary["final_checkpoint"], "global_steps": summary["global_steps"]}
        if not self.cfg.keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        if not self.cfg.keep_final:
            shutil.rmtree(summary["final_checkpoint"], ignore_errors=True)
        atomic_write_bytes(run_dir / "compare_run.json", json.dumps(info, indent=2).encode())
        return {**ident, "metrics": res.metrics, **info}, res.responses

    def _baseline_name(self, seed: int) -> str | None:
        b = self.baseline_label
        return None if b is None else ("start (untrained model)" if b == START else f"{b} seed {seed}")

    def _eval_cfg(self, with_baseline: bool) -> EvalConfig:
        """The shared eval settings; without an opponent the win-rate suites are left out."""
        e = self.cfg.eval.model_copy(deep=True)
        e.reward_model = e.reward_model or self.rm
        e.reference = e.reference or self.reference
        e.baseline = e.baseline_responses = None
        if not with_baseline and e.suites != "auto":
            e.suites = [s for s in e.suites if s not in BASELINE_SUITES]
        return e

    def run_start(self, baseline: list[str] | None) -> tuple[dict, list[str]]:
        eval_dir = self.out / "start" / "eval"
        if self.resume and (eval_dir / "responses.jsonl").exists():
            self.reused.append(START)
            metrics, responses = read_metrics(eval_dir)
            return {"label": START, "method": START, "seed": None, "metrics": metrics, "reused": True}, responses
        t1 = time.time()
        opponent = None if self.cfg.baseline == START else baseline
        res = evaluate_model(self.start_model, self._eval_cfg(opponent is not None), examples=self.examples,
                             baseline_responses=opponent, out_dir=eval_dir, name="start (untrained)",
                             actors=self.actors, baseline_name=self._baseline_name(self.cfg.seeds[0]))
        return {"label": START, "method": START, "seed": None, "metrics": res.metrics,
                "eval_s": round(time.time() - t1, 1)}, res.responses

    # -- everything
    def run(self) -> dict:
        t0 = time.time()
        self.prepare()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out / "compare_config.yaml",
                           yaml.safe_dump({**self.cfg.model_dump(mode="json"), "train": self.base_tree},
                                          sort_keys=False).encode())
        res = self.base_tree.get("resources", {})
        started = ensure_ray(res.get("address"), res.get("num_cpus"), log_to_driver=False)
        try:
            self.rm = self.shared_reward_model()
            start_responses = None
            if self.cfg.baseline == START:
                start_row, start_responses = self.run_start(None)
                self.runs.append(start_row)
            want_start = self.cfg.include_start and self.cfg.baseline != START
            order = self.run_order()
            baseline, last_seed = start_responses, None
            for k, (point, seed) in enumerate(order, 1):
                if seed != last_seed:
                    baseline, last_seed = start_responses, seed
                log.info("[%d/%d] %s, seed %d", k, len(order), point.label, seed)
                row, responses = self.run_one(point, seed, baseline)
                self.runs.append(row)
                if point.label == self.baseline_label:
                    baseline = responses
                if want_start and (point.label == self.baseline_label or self.baseline_label is None):
                    # the untrained model, against the first seed's baseline
                    self.runs.append(self.run_start(baseline)[0])
                    want_start = False
        finally:
            if self._actors is not None:
                self._actors.close()
            if started:
                ray.shutdown()
        summary = self.summarize(time.time() - t0)
        atomic_write_bytes(self.out / "compare.json", json.dumps(summary, indent=2).encode())
        md = compare_markdown(summary)
        if self.reused:
            md += f"\nReused from an earlier invocation (--resume): {', '.join(self.reused)}.\n"
        atomic_write_bytes(self.out / "compare.md", md.encode())
        if self.cfg.plots:
            from hbat.orchestrator.evaluation.plots import plot_curves, plot_metric_bars
            from hbat.orchestrator.evaluation.tradeoff import plot_tradeoff

            plot_metric_bars(summary, self.out / "metrics.png")
            plot_curves([(r["label"], r["seed"], r["run_dir"]) for r in self.runs if r.get("run_dir")],
                        self.out / "curves.png")
            plot_tradeoff(summary, self.out / "tradeoff.png")
        summary["markdown"] = md
        return summary

    def summarize(self, wall_s: float) -> dict:
        """Numbers per run label (a method, or a method at one sweep setting), over seeds."""
        methods = ([START] if any(r["label"] == START for r in self.runs) else []) + [p.label for p in self.points]
        by: dict[str, list[dict]] = {m: [r for r in self.runs if r["label"] == m] for m in methods}
        names = sorted({k for r in self.runs for k in r["metrics"]})
        results = {}
        for m, rows in by.items():
            results[m] = {k: seed_bootstrap([r["metrics"][k] for r in rows if k in r["metrics"]],
                                            self.cfg.eval.n_boot, self.cfg.eval.seed)
                          for k in names if any(k in r["metrics"] for r in rows)}
        contrasts = []
        for a, b in self.contrast_labels:
            ra = {r["seed"]: r for r in by.get(a, [])}
            rb = {r["seed"]: r for r in by.get(b, [])}
            seeds = [s for s in ra if s in rb]
            cm = {}
            for k in names:
                if all(k in ra[s]["metrics"] and k in rb[s]["metrics"] for s in seeds) and seeds:
                    cm[k] = paired_seed_bootstrap([ra[s]["metrics"][k] for s in seeds],
                                                  [rb[s]["metrics"][k] for s in seeds],
                                                  self.cfg.eval.n_boot, self.cfg.eval.seed)
            contrasts.append({"a": a, "b": b, "seeds": seeds, "metrics": cm})
        table = [k for k in self.cfg.table if k in names]
        points = {p.label: {"method": p.method.name, "setting": p.setting} for p in self.points}
        tradeoff = self.cfg.tradeoff.resolve(names)
        if tradeoff.get("x") and tradeoff.get("y"):
            tradeoff["points"] = tradeoff_points(results, points, tradeoff["x"], tradeoff["y"])
        return {
            "name": self.cfg.name, "seeds": self.cfg.seeds, "methods": methods, "baseline": self.baseline_label,
            "sweep": self.cfg.sweep, "points": points, "tradeoff": tradeoff,
            "n_examples": len(self.examples), "eval_set": self.cfg.eval.data, "reward_model": self.rm,
            "reference": self.reference, "table_metrics": table, "all_metrics": names,
            "results": results, "contrasts": [dict(c, metrics={k: v for k, v in c["metrics"].items() if k in table})
                                              for c in contrasts],
            "contrasts_all_metrics": contrasts,
            "runs": [{k: v for k, v in r.items() if k != "metrics"} for r in self.runs],
            "reused": self.reused, "wall_s": round(wall_s, 1),
        }


def run_compare(cfg: CompareConfig, train_tree: dict, resume: bool = False, overwrite: bool = False) -> dict:
    return Comparison(cfg, train_tree, resume=resume, overwrite=overwrite).run()
