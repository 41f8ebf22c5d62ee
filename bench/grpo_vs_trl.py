"""Side-by-side online-RL iteration time: ``hbat train`` (GRPO) vs TRL's GRPOTrainer.

Both systems run one GRPO iteration the same way: 8 prompts x 4 samples, up
to 32 new tokens at temperature 1 / top-p 1, the rule reward
``hbat.orchestrator.demo_data:contains_reference`` on hbat's demo prompts, a
group-normalised advantage, no KL term (beta / kl_coef 0, no reference in
the loss), no critic, one AdamW optimizer step (lr 1e-6, betas (0.9, 0.95),
grad clip 1.0, constant lr) per iteration, the same model and precision.

* hbat: the product itself, ``hbat train --config <generated yaml>`` as a
  subprocess (Ray actors: policy, reference, reward, rollout). Per-iteration
  times come from the run folder's ``metrics.jsonl`` (``time/generate_s``,
  ``time/score_s``, ``time/train_s``, ``time/sync_s``, ``time/step_s``).
* TRL: ``GRPOTrainer`` in a subprocess of this script (``--worker trl``), one
  ``train()`` of K optimizer steps; the model's ``generate``, the reward
  function and ``_generate_and_score_completions`` are wrapped with timers,
  a callback marks each optimizer step's end.

Each system runs in a fresh subprocess per round (memory is freed between
rounds); rounds alternate which system goes first; the first iteration of
every round is warm-up and excluded; medians over all timed iterations and
the ratio hbat/TRL is the median over rounds of the per-round ratio
(docs/architecture.md §6: on a shared machine only side-by-side ratios mean
anything).

Usage::

    python bench/grpo_vs_trl.py                          # smollm2-135m, fp32, K=4 x 3 rounds
    python bench/grpo_vs_trl.py --precision bf16-mixed
    python bench/grpo_vs_trl.py --precision bf16-mixed --trl-precision fp32   # hbat bf16 vs TRL's default
    python bench/grpo_vs_trl.py --tiny --rounds 1 --iters 2   # smoke on a tiny random model
    python bench/grpo_vs_trl.py --hbat-set ppo.advantage=gae  # hbat PPO with a critic vs TRL GRPO

The table is printed and written to ``bench/results/grpo_vs_trl.md``
(``..._tiny.md`` with ``--tiny``) by this script; never edit it by hand.
Needs ``pip install trl`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
from flops import CeilingSamples, compute_dtype, param_count, train_flops  # noqa: E402 - bench/ is not a package
from run_info import clock, git_rev  # noqa: E402

RULE = "hbat.orchestrator.demo_data:contains_reference"
PROMPTS_PER_ITER, SAMPLES, MAX_NEW = 8, 4, 32
MAX_PROMPT_LEN, MAX_LEN = 96, 160
SPLITS = ("generate", "score", "update", "sync")


# ----------------------------------------------------------------------- TRL worker
def trl_worker(args) -> int:
    """One TRL round in this (sub)process; writes its measurements as JSON to ``--worker-out``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from hbat.orchestrator.demo_data import contains_reference

    rows = [json.loads(line) for line in Path(args.worker_prompts).read_text().splitlines()]
    prompt_len = {r["prompt"]: len(r["prompt_ids"]) for r in rows}
    calls: dict[str, list] = {"generate": [], "gen_and_score": [], "reward": []}
    tokens: list[dict] = []
    autocast_seen: dict[str, set] = {"generate": set(), "update": set()}
    phase = ["update"]

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = clock()
            try:
                return fn(*a, **kw)
            finally:
                t1 = clock()
                calls[name].append((t1[0] - t0[0], t1[1] - t0[1]))
        return wrapper

    def reward(prompts, completions, reference, completion_ids=None, **_):
        """hbat's rule reward in TRL's reward_funcs signature (text prompts, text completions, dataset columns)."""
        t0 = clock()
        out = [contains_reference(p, c, {"reference": r}) for p, c, r in zip(prompts, completions, reference)]
        t1 = clock()
        calls["reward"].append((t1[0] - t0[0], t1[1] - t0[1]))
        tokens.append({"prompt": sum(prompt_len.get(p, 0) for p in prompts),
                       "completion": sum(len(c) for c in completion_ids or [])})
        return out

    reward.__name__ = "contains_reference"

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.end: list[tuple[float, float]] = []
            self.logs: list[dict] = []

        def on_train_begin(self, args_, state, control, model=None, **kw):
            self.threads = torch.get_num_threads()
            self.dtype = str(getattr(model, "dtype", "?"))
            self.checkpointing = bool(getattr(model, "is_activation_checkpointing", False)
                                      or getattr(model, "is_gradient_checkpointing", False))

        def on_step_end(self, args_, state, control, **kw):
            self.end.append(clock())

        def on_log(self, args_, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.logs.append({"step": state.global_step, **logs})

    timer = StepEnds()
    bf16 = args.precision != "fp32"
    with tempfile.TemporaryDirectory(prefix="hbat-bench-trl-") as out:
        cfg = GRPOConfig(
            output_dir=out, max_steps=args.iters, seed=args.seed,
            # one optimizer step sees one generation batch: 8 prompts x 4 samples, one micro-batch of 32
            per_device_train_batch_size=PROMPTS_PER_ITER * SAMPLES, gradient_accumulation_steps=1,
            steps_per_generation=1, num_generations=SAMPLES, num_iterations=1,
            max_completion_length=MAX_NEW, temperature=1.0, top_p=1.0, top_k=0,
            beta=0.0, epsilon=0.2, scale_rewards="group", disable_dropout=True, use_vllm=False,
            learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0, optim=args.trl_optim,
            bf16=bf16, fp16=False, gradient_checkpointing=False,
            model_init_kwargs={"dtype": "float32"},  # fp32 master weights; bf16=True adds autocast
            logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, use_cpu=True,
        )
        ds = datasets.Dataset.from_list([{"prompt": r["prompt"], "reference": r["reference"]} for r in rows])
        tok = transformers.AutoTokenizer.from_pretrained(args.worker_model)
        same = sum(tok(text=r["prompt"])["input_ids"] == r["prompt_ids"] for r in rows)
        trainer = GRPOTrainer(model=args.worker_model, reward_funcs=[reward], args=cfg, train_dataset=ds,
                              processing_class=tok, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)
        model = trainer.model
        gen = model.generate

        def generate(*a, **kw):
            phase[0] = "generate"
            try:
                return gen(*a, **kw)
            finally:
                phase[0] = "update"

        model.generate = timed("generate", generate)
        trainer._generate_and_score_completions = timed("gen_and_score", trainer._generate_and_score_completions)
        # on an inner layer: it sees the autocast state the trainer's wrappers set up around the model's forward
        layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        layer.register_forward_pre_hook(lambda m, a: autocast_seen[phase[0]].add(torch.is_autocast_enabled("cpu")))
        trainer.train()
        optimizer = trainer.optimizer
        opt_name = type(getattr(optimizer, "optimizer", optimizer)).__name__
        fused = getattr(optimizer, "defaults", {}).get("fused")
        loss_type = cfg.loss_type
    if timer.dtype != "torch.float32" or timer.checkpointing:
        raise RuntimeError(f"TRL trained with dtype {timer.dtype}, activation checkpointing {timer.checkpointing}; "
                           "expected float32 master weights without checkpointing")
    if autocast_seen["update"] != {bf16}:
        raise RuntimeError(f"TRL update forwards ran with autocast {sorted(autocast_seen['update'])}, bf16={bf16}")
    n = args.iters
    if len(timer.end) != n or len(calls["gen_and_score"]) != n or len(calls["generate"]) != n:
        raise RuntimeError(f"TRL ran {len(timer.end)} steps, {len(calls['gen_and_score'])} generation batches and "
                           f"{len(calls['generate'])} generate calls; expected {n} of each")
    walls = [b[0] - a[0] for a, b in itertools.pairwise(timer.end)]
    cpus = [b[1] - a[1] for a, b in itertools.pairwise(timer.end)]
    iters = []
    for i in range(1, n):  # iteration i: from step i-1's end to step i's end (it generates first)
        g, gs = calls["generate"][i], calls["gen_and_score"][i]
        iters.append({"total": walls[i - 1], "cpu": cpus[i - 1], "generate": g[0], "score": gs[0] - g[0],
                      "update": walls[i - 1] - gs[0], "sync": 0.0, "reward": calls["reward"][i][0],
                      "gen_tokens": tokens[i]["completion"], "prompt_tokens": tokens[i]["prompt"]})
    result = {"iters": iters, "threads": timer.threads, "dtype": timer.dtype, "checkpointing": timer.checkpointing,
              "autocast": {k: sorted(v) for k, v in autocast_seen.items()}, "loss_type": loss_type,
              "optimizer": f"{opt_name} (fused={fused})", "same_prompt_ids": [same, len(rows)],
              "losses": [entry["loss"] for entry in timer.logs],
              "reward_mean": [entry.get("reward", float("nan")) for entry in timer.logs]}
    Path(args.worker_out).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------- subprocesses
def become_subreaper() -> bool:
    """Orphaned descendants (Ray's workers when its raylet exits) are re-parented to this
    process, so reaping them adds their CPU time to RUSAGE_CHILDREN."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_orphans(max_wait: float = 30.0) -> None:
    """Wait (up to ``max_wait`` s) for every remaining descendant to exit and reap it."""
    end = time.monotonic() + max_wait
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.2)


def run_child(cmd: list[str], log_path: Path, timeout: float) -> tuple[float, float]:
    """Run ``cmd``; (wall s, CPU s of it and every descendant reaped). Raises with the log's tail on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                              env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                                   "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - t0
    reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{shlex.join(cmd)} exited with {proc.returncode}; last lines of its output:\n{tail}")
    return wall, cpu


def hbat_config(args, model_path: str, data: dict, run_dir: Path) -> dict:
    """The ``hbat train`` config of one round: GRPO on the rule reward, PPO phases timed alone.

    hbat has no preference-only schedule: ``two_stage`` with ``rounds: 1`` runs one
    SFT phase first; it is cut to the smallest allowed (one step on one example),
    is not among the timed iterations and counts only in the subprocess's total.
    """
    return {
        "run": {"name": run_dir.name, "output_dir": str(run_dir.parent), "seed": args.seed},
        "model": {"policy": model_path, "precision": args.precision},
        "data": {"sft": str(data["sft"]), "prompts": str(data["prompts"]),
                 "max_prompt_len": MAX_PROMPT_LEN, "max_len": MAX_LEN},
        # a fresh local Ray per round: never join a cluster someone else started on this machine
        "resources": {"torch_threads": args.threads, "address": "local"},
        "schedule": {"name": "two_stage", "preference": "ppo", "rounds": 1},
        "reference": {"refresh": "never"},
        "reward_model": {"rule_rewards": [RULE]},
        "sft": {"batch_size": 1, "steps_per_phase": 1, "optim": {"lr": args.lr}},
        "ppo": {"advantage": "grpo", "prompts_per_step": PROMPTS_PER_ITER, "samples_per_prompt": SAMPLES,
                "steps_per_phase": args.iters, "max_new_tokens": MAX_NEW, "temperature": 1.0, "top_p": 1.0,
                "top_k": 0, "mini_batch_size": PROMPTS_PER_ITER * SAMPLES, "ppo_epochs": 1, "kl_coef": 0.0,
                "clip_eps": 0.2,
                "optim": {"lr": args.lr, "betas": [0.9, 0.95], "weight_decay": 0.0, "grad_clip": 1.0,
                          "scheduler": "constant", "warmup_steps": 0, "grad_accum": 1}},
        "ewc": {"method": "none"},
        "logging": {"tensorboard": False, "progress": False},
    }


def hbat_round(args, model_path: str, data: dict, tmp: Path, r: int, mean_prompt: float) -> dict:
    import yaml

    from hbat.orchestrator.metrics import read_metrics

    run_dir = tmp / "runs" / f"hbat_round{r}"
    cfg_path = tmp / f"hbat_round{r}.yaml"
    cfg_path.write_text(yaml.safe_dump(hbat_config(args, model_path, data, run_dir), sort_keys=False))
    exe = Path(sys.executable).with_name("hbat")
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "hbat.orchestrator.cli"])
    cmd += ["train", "--config", str(cfg_path), *args.hbat_set]
    wall, cpu = run_child(cmd, tmp / f"hbat_round{r}.log", args.timeout)
    steps = [m for m in read_metrics(run_dir) if "time/generate_s" in m]
    if len(steps) != args.iters:
        raise RuntimeError(f"hbat logged {len(steps)} PPO iterations in {run_dir}/metrics.jsonl, expected {args.iters}")
    iters = []
    for m in steps[1:]:  # the first iteration is warm-up
        iters.append({"total": m["time/step_s"], "cpu": None, "generate": m["time/generate_s"],
                      "score": m["time/score_s"], "update": m["time/train_s"], "sync": m["time/sync_s"],
                      "gen_tokens": m["ppo/response_len"] * PROMPTS_PER_ITER * SAMPLES,
                      "prompt_tokens": mean_prompt * PROMPTS_PER_ITER * SAMPLES})
    return {"iters": iters, "run_wall": wall, "run_cpu": cpu,
            "losses": [m.get("ppo/policy_loss") for m in steps], "reward_mean": [m.get("ppo/score") for m in steps]}


def trl_round(args, model_path: str, prompts_file: Path, tmp: Path, r: int) -> dict:
    out = tmp / f"trl_round{r}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "trl", "--worker-out", str(out),
           "--worker-model", model_path, "--worker-prompts", str(prompts_file), "--iters", str(args.iters),
           "--threads", str(args.threads), "--precision", args.trl_precision, "--lr", repr(args.lr),
           "--trl-optim", args.trl_optim, "--seed", str(args.seed)]
    wall, cpu = run_child(cmd, tmp / f"trl_round{r}.log", args.timeout)
    res = json.loads(out.read_text())
    res.update(run_wall=wall, run_cpu=cpu)
    return res


# -------------------------------------------------------------------------- report
@dataclass
class System:
    """One system's rounds: the timed iterations (dicts of seconds and token counts) and whole-run totals."""

    name: str
    rounds: list[list[dict]] = field(default_factory=list)
    runs: list[tuple[float, float]] = field(default_factory=list)  # (wall s, CPU s) of each round's subprocess
    info: dict = field(default_factory=dict)

    def values(self, key: str) -> list[float]:
        return [it[key] for r in self.rounds for it in r if it.get(key) is not None]

    def median(self, key: str) -> float | None:
        v = self.values(key)
        return statistics.median(v) if v else None

    def round_medians(self, key: str) -> list[float]:
        return [statistics.median([it[key] for it in r]) for r in self.rounds]


def paired_ratio(a: System, b: System, key: str) -> tuple[float, list[float]]:
    """Median over rounds of (round median of a) / (round median of b)."""
    per = [x / y for x, y in zip(a.round_medians(key), b.round_medians(key)) if y > 0]
    return (statistics.median(per) if per else float("nan")), per


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def hbat_override(args, key: str, default):
    """The value ``--hbat-set key=...`` gives (the last one wins), else ``default``."""
    from hbat.orchestrator.config import parse_overrides

    found = [v for k, v in parse_overrides(args.hbat_set) if k == key]
    return found[-1] if found else default


def render(args, ctx: dict, systems: dict[str, System], loads: list, rounds_done: int, elapsed: float) -> str:
    import transformers
    import trl

    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    ceilings, n_params = ctx["ceilings"], ctx["params"]
    adv = hbat_override(args, "ppo.advantage", "grpo")
    kl = hbat_override(args, "ppo.kl_coef", 0.0)
    algo = ("GRPO in both systems, no critic" if adv == "grpo" else
            f"hbat {adv.upper()}" + (" with a critic (initialised from the policy)" if adv == "gae" else "")
            + ", TRL GRPO without a critic")
    lines = [
        "# hbat vs TRL: GRPO iteration time (generated by bench/grpo_vs_trl.py -- do not edit)", "",
        f"- command: `{cmd}`",
        f"- date (UTC): {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')}; elapsed {elapsed:.0f} s when this was written",
        f"- hbat git: {git_rev()}; torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}",
        (f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads set to {args.threads}; device cpu; "
         "shared machine, so absolute times are noisy and only the ratios are comparable"),
        ("- host memory: hbat's CPU actors keep the blocks a step frees on glibc's heap (actors/host_memory.py); "
         "TRL's process runs with glibc's defaults"),
        (f"- model: {ctx['model_label']} ({n_params / 1e6:.2f} M parameters), precision hbat {args.precision}, "
         f"TRL {args.trl_precision}, full "
         f"fine-tuning; {PROMPTS_PER_ITER} prompts x {SAMPLES} samples x <= {MAX_NEW} new tokens, temperature 1, "
         f"top-p 1; reward `{RULE}`; {algo}; KL coefficient hbat {kl:g}, TRL beta 0; one AdamW step per iteration (lr {args.lr:g}, "
         f"betas (0.9, 0.95), eps 1e-8, weight decay 0, grad clip 1.0, constant lr)"),
        (f"- hbat overrides (--hbat-set): {' '.join(args.hbat_set) or 'none'}; TRL optim={args.trl_optim} "
         "(hbat: torch AdamW with the fused kernel)"),
        ("- precision: " + ("fp32 everywhere in both systems" if args.precision == args.trl_precision == "fp32" else
                            ("hbat fp32 everywhere" if args.precision == "fp32" else
                             "hbat bf16-mixed = policy fp32 master weights + bf16 autocast (where the CPU has native "
                             "bf16), rollout and reference actors hold bf16 weights")
                            + "; " + ("TRL fp32 everywhere (its default)" if args.trl_precision == "fp32" else
                                      "TRL bf16=True = fp32 weights, CPU bf16 autocast in generation and update"))),
        (f"- {args.rounds} rounds, alternating which system goes first; K = {args.iters} iterations per system per "
         "round, the first one of each round is warm-up and not timed"),
        "",
    ]
    if rounds_done < args.rounds:
        lines += [(f"**PARTIAL: {rounds_done} of {args.rounds} rounds completed (the run was still going or was "
                   "stopped); medians below use every round finished so far.**"), ""]
    present = [s for s in systems.values() if s.rounds]
    if not present:
        return "\n".join(lines + ["(no round finished yet)", ""])
    hb, tr = systems.get("hbat"), systems.get("trl")
    both = hb is not None and tr is not None and hb.rounds and tr.rounds
    lines += [("| system | median s/iter (wall) | generation | scoring | update | sync | generated tokens/iter "
               "| generated tokens/s (generation) | ratio hbat/TRL (wall) | median CPU s/iter |"),
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in present:
        ratio = ("1 (baseline)" if s is tr else f"{paired_ratio(s, tr, 'total')[0]:.2f}") if both else "n/a"
        gen, toks = s.median("generate"), s.median("gen_tokens")
        lines.append(f"| {s.name} | {fmt(s.median('total'))} | {fmt(gen)} | {fmt(s.median('score'))} | "
                     f"{fmt(s.median('update'))} | {fmt(s.median('sync'))} | {fmt(toks, '.0f')} | "
                     f"{fmt(toks / gen if gen and toks else None, '.0f')} | {ratio} | {fmt(s.median('cpu'))} |")
    lines.append("")
    if both:
        q, per = paired_ratio(hb, tr, "total")
        lines += [(f"**ratio hbat/TRL = {q:.2f} (wall s/iteration; below 1 means hbat is faster), speed-up TRL/hbat = "
                   f"{1 / q:.2f}x**; per round: " + ", ".join(f"{x:.2f}" for x in per)), ""]
        for key in SPLITS[:3]:
            qk, perk = paired_ratio(hb, tr, key)
            lines.append(f"- ratio hbat/TRL of {key}: {qk:.2f} (per round: {', '.join(f'{x:.2f}' for x in perk)})")
        lines.append("")
    lines += ["Whole subprocess per round (start-up, model loads, every iteration incl. warm-up, shutdown; CPU = "
              "this process's reaped descendants, all threads):", ""]
    for s in present:
        lines.append(f"- {s.name}: wall s " + ", ".join(f"{w:.1f}" for w, _ in s.runs)
                     + "; CPU s " + ", ".join(f"{c:.1f}" for _, c in s.runs))
    lines.append("")
    precisions = {"hbat": args.precision, "trl": args.trl_precision}
    lines += [(f"FLOP floor of the update: 6 x {n_params / 1e6:.2f} M parameters x (prompt + response tokens of the "
               f"{PROMPTS_PER_ITER * SAMPLES} sequences) at the measured matmul ceiling of the dtype each system "
               f"computes in (" + ", ".join(f"{str(dt).removeprefix('torch.')} {ceilings.describe(dt)}"
                                              for dt in ceilings.samples)
               + f"; {args.threads} threads, 2048² matmul):"), ""]
    for key, s in systems.items():
        if not s.rounds:
            continue
        ceiling = ceilings.median(compute_dtype(precisions[key]))
        tokens = statistics.median([it["prompt_tokens"] + it["gen_tokens"] for r in s.rounds for it in r])
        floor = train_flops(n_params, int(tokens)) / ceiling
        upd = s.median("update")
        lines.append(f"- {s.name}: {tokens:.0f} tokens -> {train_flops(n_params, int(tokens)) / 1e12:.3f} TFLOP = "
                     f"**{floor:.3f} s**; the median update ({fmt(upd)} s) reaches "
                     f"{fmt(floor / upd if upd else None, '.1%')} of it")
        if key == "hbat":  # hbat runs a prompt once for its SAMPLES rows (models/shared_prefix.py)
            once = statistics.median([it["prompt_tokens"] / SAMPLES + it["gen_tokens"] for r in s.rounds for it in r])
            floor1 = train_flops(n_params, int(once)) / ceiling
            lines.append(f"  - counting each prompt once (hbat shares a prompt's forward among its {SAMPLES} samples): "
                         f"{once:.0f} tokens -> **{floor1:.3f} s**; the median update reaches "
                         f"{fmt(floor1 / upd if upd else None, '.1%')} of it")
    critic = " (with GAE also the critic's values; the update also steps the critic)" if adv == "gae" else ""
    lines += ["", "What each split covers:", "",
              ("- hbat (from `metrics.jsonl`): generation = `time/generate_s` (the rollout actor samples the 32 "
               "responses); scoring = `time/score_s` (the rule reward; old-policy and reference log-probs only where "
               "they are used: with kl_coef 0 and one update per batch hbat runs neither forward); update = "
               "`time/train_s` (advantages + the policy's forward, backward and AdamW step); sync = `time/sync_s` "
               "(the updated weights pushed to the rollout actor); s/iter = `time/step_s` (the whole step, also "
               f"batch assembly){critic}. Per-iteration CPU time is not available (the work runs in Ray actors)."),
              ("- TRL (timers in the worker): s/iter = from one optimizer step's end to the next (`on_step_end`), "
               "CPU = the worker process; generation = the policy's `generate`; scoring = the rest of "
               "`_generate_and_score_completions` (tokenising, decoding, reward function, group advantages; no "
               "log-prob forwards: with beta 0 and one iteration per generation TRL skips the reference and "
               "old-policy forwards); update = the remainder of the step (forward, backward, clip, AdamW step, "
               "logging); sync = 0 (generation uses the training model)."), ""]
    lines += ["Details:", ""]
    for s in present:
        for key in ("total",) + SPLITS:
            lines.append(f"- {s.name} {key} s by round: "
                         + "; ".join("[" + ", ".join(f"{it[key]:.2f}" for it in r) + "]" for r in s.rounds))
        if s.median("cpu") is not None:
            lines.append(f"- {s.name} CPU s by round: "
                         + "; ".join("[" + ", ".join(f"{it['cpu']:.2f}" for it in r) + "]" for r in s.rounds))
    if tr is not None and tr.info:
        i = tr.info
        lines += [f"- TRL: loss_type {i['loss_type']!r} (its default; hbat: token mean over the mini-batch = 'dapo' with "
                  f"one micro-batch), optimizer {i['optimizer']}, model dtype {i['dtype']}, activation checkpointing "
                  f"{i['checkpointing']}, autocast seen in generation forwards {i['autocast']['generate']} and update "
                  f"forwards {i['autocast']['update']}, torch threads {i['threads']}",
                  (f"- TRL tokenises hbat's rendered prompt text to hbat's prompt ids for {i['same_prompt_ids'][0]}/"
                   f"{i['same_prompt_ids'][1]} prompts")]
    for s in present:
        if s.info.get("reward_mean"):
            lines.append(f"- {s.name} round-1 mean reward by iteration: "
                         + ", ".join(fmt(x, '.3f') for x in s.info["reward_mean"]))
    lines.append("- 1-min load average (start -> end) of each round: "
                 + "; ".join(f"{r}/{name} {a:.1f}->{b:.1f}" for r, name, a, b in loads))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="hbat model reference (embedded name, folder, hub id)")
    ap.add_argument("--tiny", action="store_true", help="quick smoke on a tiny random checkpoint (ignores --model)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed"],
                    help="hbat model.precision; TRL: fp32 weights, bf16=True autocast for bf16-mixed")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median over all)")
    ap.add_argument("--iters", type=int, default=4, help="K iterations per system per round (first is warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (hbat resources.torch_threads, TRL worker)")
    ap.add_argument("--systems", default="hbat,trl", help="comma-separated subset of hbat,trl")
    ap.add_argument("--hbat-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra `hbat train` override (repeatable), e.g. ppo.advantage=gae")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--trl-optim", default="adamw_torch",
                    help="TRL optim name (hbat uses torch AdamW with fused=True on CPU = adamw_torch_fused)")
    ap.add_argument("--trl-precision", default=None, choices=["fp32", "bf16-mixed"],
                    help="TRL's precision when it differs from hbat's (default: the same as --precision), e.g. "
                         "hbat bf16-mixed against TRL's fp32 default in one run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed for one system's round")
    ap.add_argument("--out", default=None, help="markdown output (default bench/results/grpo_vs_trl[_tiny].md)")
    ap.add_argument("--worker", choices=["trl"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--worker-model", help=argparse.SUPPRESS)
    ap.add_argument("--worker-prompts", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.trl_precision = args.trl_precision or args.precision
    if args.worker:
        return trl_worker(args)
    if args.iters < 2:
        ap.error("--iters must be >= 2 (the first iteration of each round is warm-up)")
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not names or any(s not in ("hbat", "trl") for s in names):
        ap.error("--systems takes hbat, trl or both")
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("this benchmark needs TRL: pip install 'trl>=1.16,<2'") from None

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    from hbat.models import load_tokenizer, make_tiny_checkpoint, resolve_model_path
    from hbat.orchestrator.data import PromptDataset
    from hbat.orchestrator.demo_data import make_demo_data

    out = Path(args.out) if args.out else BENCH_DIR / "results" / ("grpo_vs_trl_tiny.md" if args.tiny else "grpo_vs_trl.md")

    def log(msg: str) -> None:
        print(msg, flush=True)

    become_subreaper()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hbat-bench-grpo-") as tmp_name:
        tmp = Path(tmp_name)
        if args.tiny:
            model_path = str(make_tiny_checkpoint(tmp / "tiny", hidden_size=64, num_layers=2))
            model_label = "tiny random Llama (hbat.models.make_tiny_checkpoint, hidden 64, 2 layers)"
        else:
            t = time.perf_counter()
            model_path = resolve_model_path(args.model)  # embedded GGUF -> cached safetensors (once)
            model_label = args.model if model_path == args.model else f"{args.model} ({model_path})"
            log(f"model: {model_label} (resolved in {time.perf_counter() - t:.1f} s)")
        data = make_demo_data(tmp / "data")
        tokenizer = load_tokenizer(model_path)
        prompts = PromptDataset.from_file(data["prompts"], tokenizer, max_prompt_len=MAX_PROMPT_LEN, max_len=MAX_LEN)
        rows = [prompts[i] for i in range(len(prompts))]
        prompts_file = tmp / "trl_prompts.jsonl"
        prompts_file.write_text("".join(json.dumps({"prompt": r["prompt_text"], "reference": r["meta"]["reference"],
                                                    "prompt_ids": list(r["prompt_ids"])}) + "\n" for r in rows))
        mean_prompt = statistics.mean(len(r["prompt_ids"]) for r in rows)
        dtypes = sorted({compute_dtype(p) for p in (args.precision, args.trl_precision)}, key=str)
        ctx = {"model_label": model_label, "params": param_count(model_path),
               "ceilings": CeilingSamples(args.threads, dtypes)}
        ctx["ceilings"].sample()  # and again before every round, while no system runs
        log(f"{len(rows)} prompts (mean {mean_prompt:.1f} tokens); matmul ceiling "
            + ", ".join(f"{ctx['ceilings'].describe(dt)} ({dt})" for dt in dtypes) + "; "
            f"{ctx['params'] / 1e6:.2f} M parameters")
        hbat_name = f"hbat train ({str(hbat_override(args, 'ppo.advantage', 'grpo')).upper()})"
        systems = {n: System({"hbat": hbat_name, "trl": "TRL GRPOTrainer"}[n]) for n in names}
        loads: list = []

        def write(rounds_done: int) -> str:
            text = render(args, ctx, systems, loads, rounds_done, time.perf_counter() - start)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            return text

        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                ctx["ceilings"].sample()
                load0 = os.getloadavg()[0]
                if name == "hbat":
                    res = hbat_round(args, model_path, data, tmp, r + 1, mean_prompt)
                else:
                    res = trl_round(args, model_path, prompts_file, tmp, r + 1)
                s = systems[name]
                s.rounds.append(res["iters"])
                s.runs.append((res["run_wall"], res["run_cpu"]))
                if not s.info:
                    s.info = {k: v for k, v in res.items() if k not in ("iters", "run_wall", "run_cpu")}
                loads.append((r + 1, name, load0, os.getloadavg()[0]))
                med = statistics.median(it["total"] for it in res["iters"])
                log(f"  round {r + 1}/{args.rounds} {name:4s}: median {med:.2f} s/iter "
                    f"(subprocess {res['run_wall']:.1f} s wall, {res['run_cpu']:.1f} s CPU; "
                    f"load avg {load0:.1f} -> {loads[-1][3]:.1f})")
            write(r + 1)
    text = write(args.rounds)
    print()
    print(text)
    print(f"wrote {os.path.relpath(out, Path.cwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
