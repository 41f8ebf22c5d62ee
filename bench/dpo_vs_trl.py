"""Side-by-side step time: hbat's PolicyWorker vs TRL's DPOTrainer (and SFTTrainer).

Both systems train the same model (fp32, full fine-tuning, on CPU) on the same
batch of demo preference pairs (identical token ids), with the same optimizer
(torch AdamW, same lr / betas / eps, no weight decay, grad-norm clip 1.0,
constant schedule). The two are timed alternately, round after round, in this
one script, and the table reports medians and hbat/TRL ratios -- on a shared,
noisy machine only ratios measured side by side mean anything (docs/architecture.md §6).

Per round (the order of the two systems alternates between rounds):

* hbat: ``begin_phase`` (fresh AdamW), then K steps of
  ``ReferenceWorker.sequence_logps(batch)`` + ``PolicyWorker.train_step(
  [LossPart("pairwise", batch | ref_logps, options={"loss": "dpo", "beta": b})])``,
  used in-process (the plain classes, no Ray). Timed separately: the policy
  step alone and reference forward + policy step.
* TRL: a fresh ``DPOTrainer`` (reference model loaded by TRL,
  ``precompute_ref_log_probs=False``, so its step includes the reference
  forward), one ``train()`` with ``max_steps=K``; a callback records when each
  optimizer step ends. s/step is the interval between consecutive step ends.
  TRL's rounds run in a child process of their own (spawned once, reused):
  hbat's workers raise glibc's malloc thresholds for their whole process
  (``actors/host_memory.py``), and TRL runs, as its users run it, with
  glibc's defaults.

The first step of every round is warm-up and is excluded for both systems.
Losses must agree at step 0 (both start from identical weights and batch);
the whole first-round loss trajectory is compared too (identical optimizer
settings, so it should track within float noise).

With ``--sft`` the same is done for one SFT step (hbat ``LossPart("sft")`` vs
``SFTTrainer`` on the pre-tokenised batch with ``completion_only_loss``).

``--precision fp32,bf16-mixed`` repeats the comparison per precision (hbat
``PolicyWorker(precision=...)`` with its reference in the precision's frozen
dtype; TRL ``bf16=True``: autocast over fp32 weights), ``--lora`` adds LoRA
sections (hbat ``PolicyWorker(lora=LoraConfig(...))``, TRL
``peft_config=peft.LoraConfig(...)``, the same r / alpha / target modules).
Each section states the FLOP floor of its steps at the matmul ceiling of its
compute dtype, sampled before every round of this run (``bench/flops.py``).

Usage::

    python bench/dpo_vs_trl.py                      # smollm2-135m, K=4, 3 rounds
    python bench/dpo_vs_trl.py --sft                # plus the SFT comparison
    python bench/dpo_vs_trl.py --tiny --steps 3 --rounds 2   # seconds-long smoke
    python bench/dpo_vs_trl.py --precision fp32,bf16-mixed --lora   # 4 DPO sections

The table is printed and written to ``bench/results/dpo_vs_trl.md``
(``..._tiny.md`` with ``--tiny``) by this script; never edit it by hand.
Needs ``pip install trl`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import itertools
import json
import multiprocessing
import os
import platform
import shlex
import statistics
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
from flops import CeilingSamples, compute_dtype, param_count  # noqa: E402 - bench/ is not a package
from run_info import clock, git_rev  # noqa: E402

from hbat.actors.host_memory import keep_freed_blocks  # noqa: E402

#: the LoRA adapters of ``--lora``, the same for both systems (hbat LoraConfig / peft.LoraConfig)
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


@dataclass(frozen=True)
class Variant:
    """How the policy is trained: ``precision`` (hbat's name) and full fine-tuning or LoRA."""

    precision: str = "fp32"
    lora: bool = False

    @property
    def bf16(self) -> bool:
        return self.precision != "fp32"

    @property
    def label(self) -> str:
        how = (f"LoRA r={LORA['r']} alpha={LORA['alpha']} {LORA['target_modules']}" if self.lora
               else "full fine-tuning")
        return f"{self.precision}, {how}"

    def hbat_lora(self):
        from hbat.orchestrator.config import LoraConfig

        return LoraConfig(**LORA) if self.lora else None

    def peft_config(self):
        if not self.lora:
            return None
        import peft

        return peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                               target_modules=LORA["target_modules"], task_type="CAUSAL_LM")


# --------------------------------------------------------------------------- data
def pairwise_batch(tokenizer, n_pairs: int, data_dir: Path):
    """The first ``n_pairs`` demo preference records, tokenised by hbat, plus the raw records."""
    from hbat.orchestrator.data import PairwiseDataset, collate_pairwise
    from hbat.orchestrator.demo_data import make_demo_data

    paths = make_demo_data(data_dir)
    ds = PairwiseDataset.from_file(paths["preference"], tokenizer, limit=n_pairs)
    if len(ds) < n_pairs:
        raise SystemExit(f"only {len(ds)} preference pairs available, asked for {n_pairs}")
    examples = [ds[i] for i in range(n_pairs)]
    records = [json.loads(line) for line in paths["preference"].read_text().splitlines()[:n_pairs]]
    return examples, records, collate_pairwise(examples, ds.pad_id)


def sft_batch(tokenizer, n: int, data_dir: Path):
    from hbat.orchestrator.data import SFTDataset, collate_sft
    from hbat.orchestrator.demo_data import make_demo_data

    paths = make_demo_data(data_dir)
    ds = SFTDataset.from_file(paths["sft"], tokenizer, limit=n)
    examples = [ds[i] for i in range(n)]
    return examples, collate_sft(examples, ds.pad_id)


def split_prompt(ids: list[int], mask: list[int]) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): the prompt is everything before the first loss token."""
    p = mask.index(1)
    if any(m == 0 for m in mask[p:]):
        raise ValueError("loss mask is not one contiguous completion; cannot express it as prompt + completion")
    return ids[:p], ids[p:]


def trl_pairwise_rows(examples) -> list[dict]:
    """hbat's token ids in the pre-tokenised layout TRL's preference collator consumes."""
    rows = []
    for e in examples:
        prompt, chosen = split_prompt(e["chosen_input_ids"], e["chosen_loss_mask"])
        prompt_r, rejected = split_prompt(e["rejected_input_ids"], e["rejected_loss_mask"])
        if prompt != prompt_r:
            raise ValueError("chosen and rejected sequences do not share one prompt")
        rows.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    return rows


def conversational_records(records) -> list[dict]:
    """The raw demo pairs in TRL's conversational preference format (for its own tokenisation)."""
    return [{
        "prompt": [{"role": "user", "content": r["prompt"]}],
        "chosen": [{"role": "assistant", "content": r["chosen"]}],
        "rejected": [{"role": "assistant", "content": r["rejected"]}],
    } for r in records]


# ------------------------------------------------------------------------ timing
def gaps(marks: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds between consecutive clock marks."""
    return ([b[0] - a[0] for a, b in itertools.pairwise(marks)],
            [b[1] - a[1] for a, b in itertools.pairwise(marks)])


@dataclass
class Series:
    """Timed steps of one system: per round, the per-step wall and CPU seconds after the warm-up step.

    CPU seconds (``time.process_time``: this process, all threads) are much less
    sensitive than wall time to other processes competing for the cores.
    """

    name: str
    rounds: list[list[float]] = field(default_factory=list)
    cpu_rounds: list[list[float]] = field(default_factory=list)

    def add(self, wall: list[float], cpu: list[float]) -> None:
        self.rounds.append(list(wall))
        self.cpu_rounds.append(list(cpu))

    def median(self, cpu: bool = False) -> float:
        return statistics.median([t for r in (self.cpu_rounds if cpu else self.rounds) for t in r])

    def round_medians(self, cpu: bool = False) -> list[float]:
        return [statistics.median(r) for r in (self.cpu_rounds if cpu else self.rounds)]


@dataclass
class StepRecord:
    """What a TRL round's timer callback recorded, as plain data (it comes back from TRL's process)."""

    begin: list
    end: list
    logs: list
    threads: int | None
    dtype: str
    checkpointing: bool
    autocast: set
    reference: str = ""

    @classmethod
    def of(cls, timer) -> StepRecord:
        return cls(timer.begin, timer.end, timer.logs, timer.threads, timer.dtype, timer.checkpointing,
                   set(timer.autocast))

    def intervals(self) -> tuple[list[float], list[float]]:
        """(wall, CPU) seconds per step, step end to step end, the first (warm-up) step excluded."""
        return gaps(self.end)

    def compute_only(self) -> tuple[list[float], list[float]]:
        """(wall, CPU) seconds from step begin to step end (no data loading / logging), warm-up excluded."""
        pairs = list(zip(self.begin[1:], self.end[1:]))
        return [e[0] - b[0] for b, e in pairs], [e[1] - b[1] for b, e in pairs]


class TRLProcess:
    """TRL's rounds, run in one spawned child process reused for every round.

    The child never builds an hbat worker, so its malloc keeps glibc's
    defaults (checked in every round); only the arguments TRL needs cross over."""

    FIELDS = ("steps", "pairs", "lr", "beta", "trl_optim", "variant", "seed")

    def __init__(self, threads: int) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=setup_process,
            initargs=(threads,))

    def run(self, fn, args, *rest, **kw):
        small = argparse.Namespace(**{k: getattr(args, k) for k in self.FIELDS})
        return self.pool.submit(_in_trl_process, fn, small, *rest, **kw).result()

    def close(self) -> None:
        self.pool.shutdown()


def setup_process(threads: int) -> None:
    """Threads and quiet libraries, in this process and in TRL's."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")  # deprecation chatter
    torch.set_num_threads(threads)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    import logging

    logging.getLogger("trl").setLevel(logging.ERROR)


def _in_trl_process(fn, *a, **kw):
    from hbat.actors.host_memory import thresholds_raised

    if thresholds_raised():
        raise RuntimeError("TRL's process has hbat's malloc thresholds; it must run with glibc's defaults")
    return fn(*a, **kw)


def make_timer_callback():
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        """Records wall-clock times at each optimizer step's begin/end, and every log."""

        def __init__(self):
            self.begin: list[tuple[float, float]] = []
            self.end: list[tuple[float, float]] = []
            self.logs: list[dict] = []
            self.threads: int | None = None
            self.train_begin: float | None = None
            self.autocast: set[bool] = set()  # torch.is_autocast_enabled("cpu") inside the model's layers

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.train_begin = time.perf_counter()
            self.threads = torch.get_num_threads()
            self.checkpointing = bool(getattr(model, "is_activation_checkpointing", False))
            self.dtype = str(getattr(model, "dtype", "?"))
            # a hook on an inner layer sees the autocast state the trainer's wrappers set up around forward
            layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
            layer.register_forward_pre_hook(lambda m, a: self.autocast.add(torch.is_autocast_enabled("cpu")))

        def on_step_begin(self, args, state, control, **kw):
            self.begin.append(clock())

        def on_step_end(self, args, state, control, **kw):
            self.end.append(clock())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.logs.append({"step": state.global_step, **logs})

        def intervals(self) -> tuple[list[float], list[float]]:
            """(wall, CPU) seconds per step, step end to step end, the first (warm-up) step excluded."""
            return gaps(self.end)

        def compute_only(self) -> tuple[list[float], list[float]]:
            """(wall, CPU) seconds from step begin to step end (no data loading / logging), warm-up excluded."""
            pairs = list(zip(self.begin[1:], self.end[1:]))
            return [e[0] - b[0] for b, e in pairs], [e[1] - b[1] for b, e in pairs]

    return StepTimes()


def check_trl_setup(timer, variant: Variant) -> None:
    """Fail rather than report an unfair comparison (TRL's defaults are bf16 and gradient checkpointing):
    fp32 master weights without checkpointing, and bf16 autocast exactly when the variant asks for it."""
    if timer.dtype != "torch.float32" or timer.checkpointing:
        raise RuntimeError(f"TRL trained with dtype {timer.dtype}, activation checkpointing {timer.checkpointing}; "
                           "expected float32 (master) weights without checkpointing")
    if timer.autocast != {variant.bf16}:
        raise RuntimeError(f"TRL's forwards ran with CPU autocast {sorted(timer.autocast)}; expected {variant.bf16}")


def quiet(trainer) -> None:
    """Drop the callback that prints every log dict (disable_tqdm=True installs it); our timer keeps the logs."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def common_trl_args(args, out_dir: str) -> dict:
    """TrainingArguments shared by the TRL trainers, matched to hbat's optimizer section (OptimConfig)."""
    return {
        "output_dir": out_dir,
        "max_steps": args.steps,
        "per_device_train_batch_size": args.pairs,
        "gradient_accumulation_steps": 1,
        "learning_rate": args.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-8,
        "max_grad_norm": 1.0,
        "optim": args.trl_optim,
        "bf16": args.variant.bf16,  # autocast over fp32 master weights (model_init_kwargs below)
        "fp16": False,
        "activation_checkpointing": False,  # TRL defaults gradient checkpointing on; hbat's default is off
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "use_cpu": True,
        "seed": args.seed,
        "model_init_kwargs": {"dtype": "float32"},
    }


def optim_settings(args) -> dict:
    """hbat's optimizer section (an OptimConfig as a dict) equal to the TRL arguments above."""
    return {"lr": args.lr, "betas": (0.9, 0.95), "weight_decay": 0.0, "grad_clip": 1.0,
            "scheduler": "constant", "warmup_steps": 0, "grad_accum": 1}


# --------------------------------------------------------------------------- DPO
def trl_dpo_round(args, model_path, tokenizer, examples, records, check_tokens: bool):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    timer = make_timer_callback()
    with tempfile.TemporaryDirectory(prefix="hbat-bench-trl-") as out:
        cfg = DPOConfig(**common_trl_args(args, out), beta=args.beta, loss_type=["sigmoid"],
                        precompute_ref_log_probs=False, max_length=None)
        trainer = DPOTrainer(model=model_path, args=cfg, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(conversational_records(records)), callbacks=[timer],
                             peft_config=args.variant.peft_config())
        quiet(trainer)
        ref = trainer.ref_model
        timer.reference = ("the policy with its adapters disabled (no second model)" if ref is None else
                           f"a separate frozen model loaded by TRL ({next(ref.parameters()).dtype})")
        token_note = None
        ours = trl_pairwise_rows(examples)
        if check_tokens:
            theirs = [{k: list(r[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in trainer.train_dataset]
            same = sum(a == b for a, b in zip(ours, theirs))
            extra = sum(len(b[k]) - len(a[k]) for a, b in zip(ours, theirs) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
            token_note = (f"TRL's own tokenisation of the same conversations equals hbat's for {same}/{len(ours)} pairs "
                          f"(TRL - hbat = {extra:+d} tokens in total); both systems are timed on hbat's token ids")
        # Same token ids for both systems: replace TRL's tokenised rows by hbat's.
        trainer.train_dataset = Dataset.from_list(ours)
        trainer.train()
        check_trl_setup(timer, args.variant)
        record = StepRecord.of(timer)
        record.reference = timer.reference
        del trainer
    gc.collect()
    return record, token_note


def hbat_dpo_round(args, policy, ref, batch):
    from hbat.actors.policy import LossPart

    policy.begin_phase("preference", optim_settings(args), total_steps=args.steps)
    marks, metrics, ref_logps0 = [], [], None
    for _ in range(args.steps):
        t0 = clock()
        ref_logps = ref.sequence_logps(batch)
        t1 = clock()
        m = policy.train_step([LossPart("pairwise", {**batch, "ref_logps": ref_logps},
                                        options={"loss": "dpo", "beta": args.beta})])
        t2 = clock()
        if ref_logps0 is None:
            ref_logps0 = ref_logps
        marks.append((t0, t1, t2))
        metrics.append(m)
    policy.end_phase()
    timed = marks[1:]  # the first step is warm-up

    def span(i, j):
        return [m[j][0] - m[i][0] for m in timed], [m[j][1] - m[i][1] for m in timed]

    return {"policy": span(1, 2), "total": span(0, 2), "ref": span(0, 1), "metrics": metrics,
            "threads": torch.get_num_threads(), "ref_logps0": ref_logps0}


def run_dpo(args, model_path, tokenizer, data_dir, log, progress):
    from hbat.actors.policy import PolicyWorker
    from hbat.actors.reference import ReferenceWorker
    from hbat.models.precision import precision

    examples, records, batch = pairwise_batch(tokenizer, args.pairs, data_dir)
    n_tokens = int(batch["attention_mask"].sum())
    shape = tuple(batch["input_ids"].shape)
    log(f"DPO batch: {args.pairs} pairs -> input_ids {shape} ({n_tokens} non-pad tokens, "
        f"{int(batch['loss_mask'].sum())} response tokens)")

    v: Variant = args.variant
    policy = PolicyWorker(model_path, precision=v.precision, device="cpu", seed=args.seed, torch_threads=args.threads,
                          lora=v.hbat_lora())
    ref_dtype = precision(v.precision).frozen_dtype_name  # what hbat's reference role holds at this precision
    ref = ReferenceWorker(model_path, dtype=ref_dtype, device="cpu", torch_threads=args.threads)

    hb_policy, hb_total, trl = Series("hbat policy step"), Series("hbat ref fwd + policy step"), Series("TRL DPOTrainer")
    hb_ref = Series("hbat ref fwd")
    trl_compute = Series("TRL step begin->end")
    res = {
        "kind": "DPO", "variant": v, "tokens": n_tokens, "shape": shape, "floor_passes": (6, 8),
        "hbat_reference": f"a separate ReferenceWorker holding the frozen start weights in {ref_dtype}",
        "rows": [(hb_policy, "policy step only (ref log-probs given)"),
                 (hb_total, "reference forward + policy step"),
                 (trl, "one optimizer step incl. reference forward")],
        "trl": trl, "extra": [hb_ref, trl_compute], "checks": None, "token_note": None,
        "threads": [], "loads": [], "rounds_done": 0,
    }
    first_hbat = first_trl = None
    for r in range(args.rounds):
        order = ("hbat", "trl") if r % 2 == 0 else ("trl", "hbat")
        for system in order:
            args.ceilings.sample(compute_dtype(v.precision))
            t0 = time.perf_counter()
            load0 = os.getloadavg()[0]
            if system == "hbat":
                out = hbat_dpo_round(args, policy, ref, batch)
                hb_policy.add(*out["policy"])
                hb_total.add(*out["total"])
                hb_ref.add(*out["ref"])
                threads = out["threads"]
                first_hbat = first_hbat or out
                detail = (f"median policy {statistics.median(out['policy'][0]):.2f} s, "
                          f"with ref {statistics.median(out['total'][0]):.2f} s "
                          f"(CPU {statistics.median(out['total'][1]):.2f} s)")
            else:
                timer, note = args.trl.run(trl_dpo_round, args, model_path, tokenizer, examples, records,
                                           check_tokens=r == 0)
                res["token_note"] = res["token_note"] or note
                res["trl_reference"] = timer.reference
                if len(timer.end) != args.steps:
                    raise RuntimeError(f"TRL ran {len(timer.end)} steps, expected {args.steps}")
                trl.add(*timer.intervals())
                trl_compute.add(*timer.compute_only())
                threads = timer.threads
                first_trl = first_trl or timer
                wall, cpu = timer.intervals()
                detail = f"median {statistics.median(wall):.2f} s/step (CPU {statistics.median(cpu):.2f} s)"
            res["threads"] = sorted(set(res["threads"]) | {threads})
            res["loads"].append((r + 1, system, load0, os.getloadavg()[0]))
            log(f"  round {r + 1}/{args.rounds} {system:4s}: {detail}  "
                f"(round wall {time.perf_counter() - t0:.1f} s, load avg {load0:.1f} -> {res['loads'][-1][3]:.1f})")
            if first_hbat and first_trl and res["checks"] is None:
                res["checks"] = dpo_checks(first_hbat, first_trl)
            res["rounds_done"] = min(len(hb_total.rounds), len(trl.rounds))
            progress(res)
    del policy, ref
    gc.collect()
    return res


def dpo_checks(first_hbat: dict, first_trl) -> dict:
    """Loss agreement: round 1 of each system starts from the same weights and batch."""
    hb_losses = [m["pref/loss"] for m in first_hbat["metrics"]]
    trl_losses = [entry["loss"] for entry in first_trl.logs]
    ref_lp = first_hbat["ref_logps0"]  # = policy log-probs at step 0 (identical weights)
    n = len(ref_lp) // 2
    trl0 = first_trl.logs[0]
    return {
        "step0_loss": (hb_losses[0], trl_losses[0]),
        "step0_mean_logp_chosen": (float(ref_lp[:n].mean()), trl0.get("logps/chosen", float("nan"))),
        "step0_mean_logp_rejected": (float(ref_lp[n:].mean()), trl0.get("logps/rejected", float("nan"))),
        "trajectory": (hb_losses, trl_losses),
        "grad_norm0": (first_hbat["metrics"][0]["optim/grad_norm"], trl0.get("grad_norm", float("nan"))),
    }


# --------------------------------------------------------------------------- SFT
def trl_sft_round(args, model_path, tokenizer, examples):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = []
    for e in examples:
        rows.append({"input_ids": list(e["input_ids"]), "completion_mask": list(e["loss_mask"])})
    timer = make_timer_callback()
    with tempfile.TemporaryDirectory(prefix="hbat-bench-trl-") as out:
        cfg = SFTConfig(**common_trl_args(args, out), completion_only_loss=True, packing=False,
                        padding_free=False, max_length=None)
        trainer = SFTTrainer(model=model_path, args=cfg, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(rows), callbacks=[timer],
                             peft_config=args.variant.peft_config())
        quiet(trainer)
        trainer.train()
        check_trl_setup(timer, args.variant)
        record = StepRecord.of(timer)
        del trainer
    gc.collect()
    return record


def hbat_sft_round(args, policy, batch):
    from hbat.actors.policy import LossPart

    policy.begin_phase("sft", optim_settings(args), total_steps=args.steps)
    marks, metrics = [], []
    for _ in range(args.steps):
        t0 = clock()
        metrics.append(policy.train_step([LossPart("sft", batch)]))
        marks.append((t0, clock()))
    policy.end_phase()
    timed = marks[1:]  # the first step is warm-up
    return ([b[0] - a[0] for a, b in timed], [b[1] - a[1] for a, b in timed]), metrics


def run_sft(args, model_path, tokenizer, data_dir, log, progress):
    from hbat.actors.policy import PolicyWorker

    examples, batch = sft_batch(tokenizer, args.pairs, data_dir)
    n_tokens = int(batch["attention_mask"].sum())
    shape = tuple(batch["input_ids"].shape)
    log(f"SFT batch: {args.pairs} examples -> input_ids {shape} ({n_tokens} non-pad tokens)")
    v: Variant = args.variant
    policy = PolicyWorker(model_path, precision=v.precision, device="cpu", seed=args.seed, torch_threads=args.threads,
                          lora=v.hbat_lora())
    hb, trl = Series("hbat sft step"), Series("TRL SFTTrainer")
    res = {"kind": "SFT", "variant": v, "tokens": n_tokens, "shape": shape, "floor_passes": (6,),
           "rows": [(hb, "one SFT optimizer step"), (trl, "one SFT optimizer step")],
           "trl": trl, "extra": [], "token_note": None, "threads": [], "loads": [], "checks": None,
           "rounds_done": 0}
    first_hbat = first_trl = None
    for r in range(args.rounds):
        order = ("hbat", "trl") if r % 2 == 0 else ("trl", "hbat")
        for system in order:
            args.ceilings.sample(compute_dtype(args.variant.precision))
            load0 = os.getloadavg()[0]
            if system == "hbat":
                (wall, cpu), metrics = hbat_sft_round(args, policy, batch)
                first_hbat = first_hbat or metrics
                threads = torch.get_num_threads()
            else:
                timer = args.trl.run(trl_sft_round, args, model_path, tokenizer, examples)
                if len(timer.end) != args.steps:
                    raise RuntimeError(f"TRL ran {len(timer.end)} steps, expected {args.steps}")
                wall, cpu = timer.intervals()
                first_trl = first_trl or timer
                threads = timer.threads
            (hb if system == "hbat" else trl).add(wall, cpu)
            res["threads"] = sorted(set(res["threads"]) | {threads})
            res["loads"].append((r + 1, system, load0, os.getloadavg()[0]))
            log(f"  round {r + 1}/{args.rounds} {system:4s}: median {statistics.median(wall):.2f} s/step "
                f"(CPU {statistics.median(cpu):.2f} s)  (load avg {load0:.1f} -> {res['loads'][-1][3]:.1f})")
            if first_hbat and first_trl and res["checks"] is None:
                hb_losses = [m["sft/loss"] for m in first_hbat]
                trl_losses = [entry["loss"] for entry in first_trl.logs]
                res["checks"] = {
                    "step0_loss": (hb_losses[0], trl_losses[0]), "trajectory": (hb_losses, trl_losses),
                    "grad_norm0": (first_hbat[0]["optim/grad_norm"],
                                   first_trl.logs[0].get("grad_norm", float("nan"))),
                }
            res["rounds_done"] = min(len(hb.rounds), len(trl.rounds))
            progress(res)
    del policy
    gc.collect()
    return res


# ------------------------------------------------------------------------ report
def paired_ratio(a: Series, b: Series, cpu: bool = False) -> tuple[float, list[float]]:
    """Median over rounds of (round median of a) / (round median of b)."""
    per_round = [x / y for x, y in zip(a.round_medians(cpu), b.round_medians(cpu))]
    return statistics.median(per_round), per_round


def floor_lines(res: dict, args) -> list[str]:
    """The FLOP floor of each row at the measured matmul ceiling of the variant's compute dtype.

    Per token: policy forward 2 x params, backward 4 x params (2 with LoRA: no
    gradients of the frozen matrices, the adapters' own FLOPs neglected),
    reference forward 2 x params; attention aside.
    """
    v: Variant = res["variant"]
    dtype = compute_dtype(v.precision)
    ceiling, n_params = args.ceilings.median(dtype), args.n_params
    policy = 4 if v.lora else 6
    factors = [policy, policy + 2, policy + 2] if res["kind"] == "DPO" else [policy, policy]
    dt = "bf16" if dtype == torch.bfloat16 else "fp32"
    out = [(f"- FLOP floor at the measured {dt} matmul ceiling of {args.ceilings.describe(dtype)} ({args.threads} threads, "
            f"2048² matmul), {n_params / 1e6:.2f} M parameters x {res['tokens']} tokens"
            + (" (LoRA: backward 2 x params per token, no frozen-weight gradients)" if v.lora else "") + ":")]
    for (s, _), f in zip(res["rows"], factors):
        floor = f * n_params * res["tokens"] / ceiling
        out.append(f"  - {s.name}: {f} x params x tokens = {f * n_params * res['tokens'] / 1e12:.3f} TFLOP = "
                   f"**{floor:.3f} s**; the median step reaches {floor / s.median():.1%} of it")
    return out


def section(res: dict, args) -> list[str]:
    trl: Series = res["trl"]
    v: Variant = res["variant"]
    lines = [(f"### {res['kind']} ({v.label}): {res['shape'][0]} sequences x {res['shape'][1]} positions, "
             f"{res['tokens']} non-pad tokens per step"), ""]
    if res["rounds_done"] < args.rounds:
        lines += [(f"**PARTIAL: {res['rounds_done']} of {args.rounds} rounds completed for both systems "
                  "(the run was still going or was stopped); medians below use every round finished so far.**"), ""]
    if not res["rounds_done"]:
        return lines + ["(no round finished for both systems yet)", ""]
    lines += [("| system | what one step is | median s/step (wall) | tokens/s (wall) | ratio hbat/TRL (wall) "
              "| median CPU s/step | ratio hbat/TRL (CPU) |"),
              "|---|---|---:|---:|---:|---:|---:|"]
    for s, what in res["rows"]:
        med, cmed = s.median(), s.median(cpu=True)
        ratio = "1 (baseline)" if s is trl else f"{paired_ratio(s, trl)[0]:.2f}"
        cratio = "1 (baseline)" if s is trl else f"{paired_ratio(s, trl, cpu=True)[0]:.2f}"
        lines.append(f"| {s.name} | {what} | {med:.2f} | {res['tokens'] / med:.0f} | {ratio} | {cmed:.2f} | {cratio} |")
    lines += ["", (f"ratio = median over rounds of (hbat round median s/step) / (TRL round median s/step), "
                  f"measured in alternating rounds; below 1 means hbat is faster. "
                  f"CPU s/step = CPU seconds of the benchmark process (all threads) per step, "
                  f"less sensitive than wall time to other processes on the machine. "
                  f"{len(trl.rounds)} rounds x {args.steps - 1} timed steps per system "
                  f"(first step of each round excluded as warm-up)."), ""]
    for s, _ in res["rows"]:
        if s is not trl:
            for cpu in (False, True):
                _, per = paired_ratio(s, trl, cpu)
                lines.append(f"- per-round ratio {s.name} / TRL ({'CPU' if cpu else 'wall'}): "
                             + ", ".join(f"{x:.2f}" for x in per))
    for s in [s for s, _ in res["rows"]] + res["extra"]:
        for label, rounds in (("wall", s.rounds), ("CPU", s.cpu_rounds)):
            lines.append(f"- {s.name} {label} s/step by round: "
                         + "; ".join("[" + ", ".join(f"{t:.2f}" for t in r) + "]" for r in rounds))
    lines.append("- 1-min load average (start -> end) of each round: "
                 + "; ".join(f"{r}/{sysname} {a:.1f}->{b:.1f}" for r, sysname, a, b in res["loads"]))
    lines.append(f"- torch threads seen during the timed steps: {res['threads']}; TRL model checked to train "
                 "float32 (master) weights without activation checkpointing, like hbat, and with CPU bf16 autocast "
                 f"{'on' if v.bf16 else 'off'} in its forwards (hbat {v.precision}: "
                 + ("bf16 autocast where the CPU has native bf16, fp32 master weights and AdamW state"
                    if v.bf16 else "fp32 throughout") + ")")
    if res.get("hbat_reference"):
        lines.append(f"- reference log-probs: hbat from {res['hbat_reference']}; TRL from "
                     f"{res.get('trl_reference', '?')}")
    lines += floor_lines(res, args)
    if res["token_note"]:
        lines.append(f"- {res['token_note']}")
    c = res["checks"]
    if c is None:
        return lines + [""]
    hb0, trl0 = c["step0_loss"]
    tol = args.bf16_loss_tol if v.bf16 else args.loss_tol  # bf16: hbat's reference holds bf16 weights
    ok = abs(hb0 - trl0) <= tol
    lines += ["", f"Loss check (round 1 of each system, identical initial weights and batch; tolerance {tol:g}):", "",
              (f"- step-0 loss: hbat {hb0:.6f}, TRL {trl0:.6f}, |diff| {abs(hb0 - trl0):.2e} -> "
              f"{'AGREE' if ok else 'DISAGREE'}")]
    if res["kind"] == "DPO":
        lines.append("  (policy = reference at step 0, so the DPO loss there is ln 2 = 0.693147 for any correct "
                     "implementation; the log-probs and later steps below are the informative checks)")
        if v.bf16:
            lines.append("  (bf16-mixed: hbat's reference holds bf16 weights while its policy computes from fp32 "
                         "weights under autocast, so hbat's step-0 loss differs from ln 2 by that rounding; TRL's "
                         "reference is " + ("the policy itself with adapters off" if v.lora else "an fp32 copy") + ")")
        for key, label in (("step0_mean_logp_chosen", "mean chosen log-prob"),
                           ("step0_mean_logp_rejected", "mean rejected log-prob")):
            a, b = c[key]
            lines.append(f"- step-0 {label}: hbat {a:.4f}, TRL {b:.4f}, |diff| {abs(a - b):.2e}")
    g_a, g_b = c["grad_norm0"]
    lines.append(f"- step-0 grad norm (before clipping): hbat {g_a:.4f}, TRL {g_b:.4f}")
    hb_l, trl_l = c["trajectory"]
    diff = max(abs(a - b) for a, b in zip(hb_l, trl_l))
    lines.append("- loss by step, hbat: " + ", ".join(f"{x:.5f}" for x in hb_l))
    lines.append("- loss by step, TRL:  " + ", ".join(f"{x:.5f}" for x in trl_l))
    lines.append(f"- max |diff| over the {len(hb_l)} steps: {diff:.2e}")
    res["agree"] = ok
    return lines + [""]


def header(args, model_label: str, wall: float) -> list[str]:
    import transformers
    import trl

    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    return [
        "# hbat vs TRL: training step time (generated by bench/dpo_vs_trl.py -- do not edit)", "",
        f"- command: `{cmd}`",
        f"- date (UTC): {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')}; elapsed {wall:.0f} s when this was written",
        f"- hbat git: {git_rev()}; torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}",
        (f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads set to {args.threads}; device cpu; "
        "shared machine, so absolute times are noisy and only the ratios are comparable"),
        ("- host memory: hbat's workers keep the blocks a step frees on glibc's heap (actors/host_memory.py); "
         "TRL runs in a process of its own with glibc's defaults (checked every round)"
         if keep_freed_blocks() else "- host memory: glibc's defaults for both systems"),
        (f"- model: {model_label}; {'; '.join(v.label for v in args.variants)} (one section each); "
        f"AdamW (torch, TRL optim={args.trl_optim}) lr {args.lr:g}, "
        f"betas (0.9, 0.95), eps 1e-8, weight decay 0, grad clip 1.0, constant lr; DPO beta {args.beta:g} (sigmoid)"),
        f"- {args.rounds} rounds, alternating which system goes first; K = {args.steps} steps per system per round",
        "",
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="hbat model reference (embedded name, folder, hub id)")
    ap.add_argument("--tiny", action="store_true", help="quick smoke on a tiny random checkpoint (ignores --model)")
    ap.add_argument("--pairs", type=int, default=8, help="preference pairs (and SFT examples) per batch")
    ap.add_argument("--steps", type=int, default=4, help="K optimizer steps per system per round (first is warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median over all)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both systems")
    ap.add_argument("--trl-optim", default="adamw_torch",
                    help="TRL optim name; adamw_torch = torch.optim.AdamW, per-tensor loop (TRL's own default and "
                         "hbat's kernel: adamw_torch_fused)")
    ap.add_argument("--sft", action="store_true", help="also compare one SFT step (SFTTrainer vs LossPart('sft'))")
    ap.add_argument("--no-dpo", action="store_true", help="skip the DPO comparison (with --sft)")
    ap.add_argument("--loss-tol", type=float, default=1e-3, help="tolerance of the step-0 loss agreement")
    ap.add_argument("--bf16-loss-tol", type=float, default=2e-2,
                    help="the same under bf16-mixed (hbat's reference holds bf16 weights, TRL's fp32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="fp32",
                    help="comma-separated hbat precisions, one section each: fp32 (default), bf16-mixed "
                         "(TRL: bf16=True autocast over fp32 weights)")
    ap.add_argument("--lora", action="store_true",
                    help=f"also train LoRA adapters (r={LORA['r']}, alpha={LORA['alpha']}, {LORA['target_modules']}): "
                         "hbat model.lora, TRL peft_config; extra sections after the full fine-tuning ones")
    ap.add_argument("--lora-only", action="store_true", help="with --lora: skip the full fine-tuning sections")
    ap.add_argument("--out", default=None, help="markdown output (default bench/results/dpo_vs_trl[_tiny].md)")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step of each round is warm-up)")
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not precisions or any(p not in ("fp32", "bf16-mixed") for p in precisions):
        ap.error("--precision takes fp32, bf16-mixed or both (comma-separated)")
    if args.lora_only and not args.lora:
        ap.error("--lora-only needs --lora")
    args.variants = ([Variant(p) for p in precisions] if not args.lora_only else []) + \
        ([Variant(p, lora=True) for p in precisions] if args.lora else [])

    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("this benchmark needs TRL: pip install 'trl>=1.16,<2'") from None

    setup_process(args.threads)
    from hbat.models import load_tokenizer, make_tiny_checkpoint, resolve_model_path

    out = Path(args.out) if args.out else BENCH_DIR / "results" / ("dpo_vs_trl_tiny.md" if args.tiny else "dpo_vs_trl.md")

    def log(msg: str) -> None:
        print(msg, flush=True)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hbat-bench-") as tmp:
        tmp = Path(tmp)
        if args.tiny:
            model_path = str(make_tiny_checkpoint(tmp / "tiny", hidden_size=64, num_layers=2))
            model_label = "tiny random Llama (hbat.models.make_tiny_checkpoint, hidden 64, 2 layers)"
        else:
            t = time.perf_counter()
            model_path = resolve_model_path(args.model)  # embedded GGUF -> cached safetensors (once)
            model_label = args.model if model_path == args.model else f"{args.model} ({model_path})"
            log(f"model: {model_label} (resolved in {time.perf_counter() - t:.1f} s)")
        tokenizer = load_tokenizer(model_path)
        args.n_params = param_count(model_path)
        args.ceilings = CeilingSamples(args.threads, {compute_dtype(v.precision) for v in args.variants})
        args.ceilings.sample()  # and again before every round (run_dpo, run_sft)
        for dtype in args.ceilings.samples:
            log(f"matmul ceiling ({dtype}, {args.threads} threads): {args.ceilings.describe(dtype)}")
        results: list[dict] = []
        args.trl = TRLProcess(args.threads)

        def render() -> str:
            body = []
            for res in results:
                body += section(res, args)
            return "\n".join(header(args, model_label, time.perf_counter() - start) + body)

        def progress(res: dict) -> None:
            """Rewrite the report after every round, so a stopped run still leaves its measurements."""
            if not results or results[-1] is not res:
                results.append(res)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render() + "\n")

        for variant in args.variants:
            args.variant = variant
            if not args.no_dpo:
                log(f"== DPO ({variant.label}) ==")
                run_dpo(args, model_path, tokenizer, tmp / "data", log, progress)
            if args.sft:
                log(f"== SFT ({variant.label}) ==")
                run_sft(args, model_path, tokenizer, tmp / "data", log, progress)
        args.trl.close()
    text = render()
    print()
    print(text)
    out.write_text(text + "\n")
    print(f"wrote {os.path.relpath(out, Path.cwd())}")
    return 0 if all(r.get("agree") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
