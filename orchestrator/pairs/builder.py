"""``hbat build-pairs``: preference pairs by contrast, without human labels.

Reads top to bottom like the recipe:

1. validate the config and every prompt (one-line errors naming file, line
   or key; nothing loads before this passes), check a resumed folder was
   built with the same settings;
2. open the append-only store (``store.py``): its done-set of
   (prompt id, strategy) units says what is left;
3. derive the weaker models once (``derive.py``), start one rollout actor
   (``RolloutWorker``, transformers on CPU / vLLM on GPU) per model;
4. for each batch of prompts with work left: every selected strategy asks for
   its generations (grouped per model into one batched ``generate_text`` call
   each; the refine strategy's second stage after its first), builds its
   pairs, the scorer scores both sides, and the batch is committed at once;
   a progress bar counts batches.

Each pair row is a valid ``data.preference`` record plus provenance (see
``docs/preference_data.md``); each point-wise row a valid ``data.pointwise``
record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from hbat.orchestrator.config import ConfigError
from hbat.orchestrator.data import DataError
from hbat.orchestrator.data.records import iter_records
from hbat.orchestrator.data.schema import normalize_pairwise, normalize_pointwise, normalize_prompt
from hbat.orchestrator.pairs.config import BuildPairsConfig
from hbat.orchestrator.pairs.store import PairStore
from hbat.orchestrator.pairs.strategies import STRATEGIES, Output, Strategy, user_text

log = logging.getLogger("hbat.pairs")

_WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


@dataclass
class PromptRow:
    id: str
    index: int  # position among the kept prompts (leaderboard's cycle)
    prompt: object  # string or messages, as given
    meta: dict
    where: str  # "file, line N"


# ------------------------------------------------------------------ validation (no model loads)
def load_prompts(cfg: BuildPairsConfig) -> tuple[list[PromptRow], int]:
    """Every prompt record validated; ids from an ``id`` field (unique) or the prompt's content hash.

    Returns the prompts and how many duplicates (same content, no id) were dropped.
    """
    rows: list[PromptRow] = []
    seen: dict[str, str] = {}
    dups = 0
    for n, item in enumerate(iter_records(cfg.prompts)):
        if cfg.limit is not None and n >= cfg.limit:
            break
        try:
            p = normalize_prompt(item.record)
        except DataError as exc:
            raise DataError(exc.reason, path=item.path, line=item.number, field=exc.field, unit=item.unit) from None
        where = f"{item.path}, {item.unit} {item.number}"
        meta = dict(p.meta)
        if "id" in meta:
            pid = meta.pop("id")
            if not isinstance(pid, (str, int)) or isinstance(pid, bool) or str(pid) == "":
                raise DataError("expected a non-empty string or int", path=item.path, line=item.number,
                                field="id", unit=item.unit)
            pid = str(pid)
            if pid in seen:
                raise DataError(f"duplicate id {pid!r} (first at {seen[pid]})", path=item.path, line=item.number,
                                field="id", unit=item.unit)
        else:
            pid = hashlib.sha1(json.dumps(p.prompt, sort_keys=True).encode()).hexdigest()[:16]
            if pid in seen:
                dups += 1
                continue
        seen[pid] = where
        rows.append(PromptRow(pid, len(rows), p.prompt, meta, where))
    return rows, dups


def check_sources(cfg: BuildPairsConfig) -> None:
    """Model paths that look local must exist; rule functions must import (before any model loads)."""
    from hbat.actors.reward import load_rule
    from hbat.models.default import EMBEDDED_MODELS

    def check(path: str, key: str) -> None:
        if path in EMBEDDED_MODELS or Path(path).expanduser().exists():
            return
        if path.startswith(("/", ".", "~")) or path.endswith(".gguf") or path.count("/") != 1:
            raise ConfigError(f"{key}: model not found: {path}")

    for name, src in cfg.models.items():
        check(src.path if src.path else src.derive.base, f"models.{name}.{'path' if src.path else 'derive.base'}")
    if cfg.scorer.reward_model:
        check(cfg.scorer.reward_model, "scorer.reward_model")
    for r in cfg.scorer.rules:
        try:
            load_rule(r)
        except ValueError as exc:
            raise ConfigError(f"scorer.rules: {exc}") from None


# ------------------------------------------------------------------ the build
class PairBuilder:
    def __init__(self, cfg: BuildPairsConfig, overwrite: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.prompts, self.duplicates = load_prompts(cfg)
        check_sources(cfg)
        self.strategies: dict[str, Strategy] = {n: STRATEGIES[n](getattr(cfg.strategies, n)) for n in cfg.selected()}
        self._check_folder(overwrite)
        self.store = PairStore(self.out)
        if self.store.recovered_bytes:
            log.warning("%s: cut %d bytes of rows from an uncommitted batch (they are generated again)",
                        self.out, self.store.recovered_bytes)

    def _check_folder(self, overwrite: bool) -> None:
        fp = self.out / "fingerprint.json"
        mine = self.cfg.generation_fingerprint()
        if fp.exists() and json.loads(fp.read_text()) != mine:
            if not overwrite:
                raise ConfigError(f"output_dir {self.out} holds pairs built with other settings "
                                  f"({fp}); use another output_dir or --overwrite")
        if overwrite:
            for name in ("pairs.jsonl", "pointwise.jsonl", "done.jsonl", "fingerprint.json"):
                (self.out / name).unlink(missing_ok=True)
        from hbat.models.atomic import atomic_write_bytes

        atomic_write_bytes(fp, json.dumps(mine, indent=2).encode())
        atomic_write_bytes(self.out / "config.yaml", yaml.safe_dump(self.cfg.model_dump(mode="json"),
                                                                    sort_keys=False).encode())

    # -------------------------------------------------------------- plan
    def pending_batches(self) -> list[tuple[int, list[PromptRow]]]:
        """Fixed batches of the prompt list (so seeds do not move on resume), those with work left."""
        bs = self.cfg.batch_size
        out = []
        for b in range(math.ceil(len(self.prompts) / bs)):
            batch = self.prompts[b * bs:(b + 1) * bs]
            if any((p.id, s) not in self.store.done for p in batch for s in self.strategies):
                out.append((b, batch))
        return out

    # -------------------------------------------------------------- models
    def _start(self) -> None:
        import ray

        from hbat.orchestrator.pairs.derive import derive_model
        from hbat.orchestrator.pairs.worker import PairRolloutWorker

        c = self.cfg
        needed = sorted({m for s in self.strategies.values() for m in s.model_names()})
        self.paths = {}
        for name in needed:
            src = c.models[name]
            self.paths[name] = src.path if src.path else derive_model(
                src.derive.model_dump(mode="json"), self.out / "models" / name)
        if not ray.is_initialized():
            ray.init(address=c.resources.address, num_cpus=c.resources.num_cpus, include_dashboard=False,
                     runtime_env={"env_vars": _WORKER_ENV}, log_to_driver=True)
        cls = ray.remote(PairRolloutWorker)
        self.actors = {n: cls.options(num_cpus=c.resources.actor_cpus).remote(
            self.paths[n], backend=c.resources.backend, threads=c.resources.torch_threads) for n in needed}
        self.params = dict(zip(needed, ray.get([self.actors[n].num_parameters.remote() for n in needed])))
        pc = self.strategies.get("parameter_count")
        if pc is not None:
            big, small = pc.opts.larger, pc.opts.smaller
            if self.params[big] <= self.params[small]:
                raise ConfigError(f"strategies.parameter_count: larger '{big}' has {self.params[big]} parameters, "
                                  f"not more than smaller '{small}' ({self.params[small]})")
        from hbat.models.atomic import atomic_write_bytes

        info = {n: {"path": self.paths[n], "params": self.params[n], "rank": c.models[n].rank} for n in needed}
        atomic_write_bytes(self.out / "models.json", json.dumps(info, indent=2).encode())
        self.scorer = None
        if c.scorer.enabled:
            from hbat.orchestrator.pairs.scoring import PairScorer

            self.scorer = PairScorer(c.scorer, num_cpus=c.resources.actor_cpus,
                                     torch_threads=c.resources.torch_threads)

    def _stop(self) -> None:
        import ray

        for a in getattr(self, "actors", {}).values():
            ray.kill(a)
        if getattr(self, "scorer", None) is not None:
            self.scorer.close()

    # -------------------------------------------------------------- one batch
    def _source(self, req, decoding: dict) -> dict:
        return {"model": req.model, "model_path": self.paths[req.model], "params": self.params[req.model],
                "variant": req.variant, "input": req.messages, "decoding": decoding}

    def _generate(self, b: int, batch: list[PromptRow]) -> dict[tuple[str, str], dict[str, Output]]:
        """Every pending unit's outputs, stage by stage; one generate call per (strategy, stage, model)."""
        import ray

        from hbat.actors.sampling import SamplingSettings

        outputs: dict[tuple[str, str], dict[str, Output]] = {}
        units = [(p, s) for s in self.strategies for p in batch if (p.id, s) not in self.store.done]
        for p, s in units:
            outputs[(p.id, s)] = {}
        stages = max((self.strategies[s].stages for _, s in units), default=0)
        names = list(STRATEGIES)
        for stage in range(stages):
            calls = []  # (future, [(unit key, request)], decoding)
            for s, strat in self.strategies.items():
                if stage >= strat.stages:
                    continue
                groups: dict[str, list] = {}
                for p, s2 in units:
                    if s2 != s:
                        continue
                    for req in strat.requests(p.prompt, stage, outputs[(p.id, s)], index=p.index):
                        groups.setdefault(req.model, []).append(((p.id, s), req))
                dec = self.cfg.decoding(s)
                for model, items in groups.items():
                    seed = (self.cfg.seed * 1_000_003 + b * 1_009 + names.index(s) * 101 + stage * 13
                            + sorted(self.actors).index(model)) % (2**31)
                    sampling = SamplingSettings(temperature=dec.temperature, top_p=dec.top_p, top_k=dec.top_k,
                                                max_new_tokens=dec.max_new_tokens, n=1, seed=seed)
                    fut = self.actors[model].generate_text.remote([r.messages for _, r in items], sampling)
                    calls.append((fut, items, {**dec.model_dump(), "seed": seed}))
            results = ray.get([f for f, _, _ in calls])
            for (_, items, decoding), texts in zip(calls, results):
                for (key, req), group in zip(items, texts):
                    outputs[key][req.slot] = Output(group[0].strip(), self._source(req, decoding))
        return outputs

    def _rank(self, model: str) -> int:
        return self.cfg.models[model].rank or 1

    def _rows(self, p: PromptRow, s: str, outs: dict[str, Output], skipped: dict) -> list[dict]:
        strat = self.strategies[s]
        rows = []
        for spec in strat.pairs(outs):
            c_out, r_out = outs[spec.chosen], outs[spec.rejected]
            chosen = spec.chosen_text if spec.chosen_text is not None else c_out.text
            rejected = r_out.text
            if not chosen.strip() or not rejected.strip():
                skipped["empty"] = skipped.get("empty", 0) + 1
                continue
            if chosen.strip() == rejected.strip():
                skipped["identical"] = skipped.get("identical", 0) + 1
                continue
            extra = dict(spec.extra)
            ranks = {k: extra.pop(k) for k in ("chosen_rank", "rejected_rank") if k in extra}
            if not ranks:
                cm, rm = c_out.source["model"], r_out.source["model"]
                ranks = {"chosen_rank": self._rank(cm), "rejected_rank": self._rank(rm)}
                if s == "parameter_count" and (self.cfg.models[cm].rank is None or self.cfg.models[rm].rank is None):
                    ranks = {"chosen_rank": 1, "rejected_rank": 2}  # by size: the larger model ranks first
            row = {"prompt": p.prompt, "chosen": chosen, "rejected": rejected, "strategy": s, "level": strat.level,
                   "prompt_id": p.id, "chosen_source": {**c_out.source, "slot": spec.chosen, **extra},
                   "rejected_source": {**r_out.source, "slot": spec.rejected}, **ranks,
                   "strength_gap": ranks["rejected_rank"] - ranks["chosen_rank"]}
            normalize_pairwise(row)  # every row is a valid data.preference record
            rows.append(row)
        return rows

    def _score(self, pairs: list[tuple[PromptRow, dict]]) -> None:
        if self.scorer is None or not pairs:
            return
        prompts = [p.prompt for p, _ in pairs for _ in (0, 1)]
        texts = [user_text(p.prompt) for p, _ in pairs for _ in (0, 1)]
        metas = [p.meta for p, _ in pairs for _ in (0, 1)]
        responses = [r[k] for _, r in pairs for k in ("chosen", "rejected")]
        scores = self.scorer.score(prompts, texts, responses, metas)
        for i, (_, row) in enumerate(pairs):
            row["chosen_score"], row["rejected_score"] = scores[2 * i], scores[2 * i + 1]
            row["score_gap"] = row["chosen_score"] - row["rejected_score"]

    def _pointwise(self, rows: list[dict]) -> list[dict]:
        """One record per distinct response of a unit; ``side`` label = share of its pairs it was chosen in."""
        mode = self.cfg.pointwise.label
        by: dict[tuple, dict] = {}
        for row in rows:
            for side in ("chosen", "rejected"):
                src = row[f"{side}_source"]
                key = (row["prompt_id"], row["strategy"], src["slot"])
                rec = by.setdefault(key, {"prompt": row["prompt"], "response": row[side], "wins": 0, "n": 0,
                                          "score": row.get(f"{side}_score"), "strategy": row["strategy"],
                                          "prompt_id": row["prompt_id"], "source": src})
                rec["n"] += 1
                rec["wins"] += side == "chosen"
        out = []
        for rec in by.values():
            wins, n = rec.pop("wins"), rec.pop("n")
            score = rec["score"]
            if mode == "side":
                label = wins / n
            elif mode == "score":
                label = min(1.0, max(0.0, score))
            else:
                label = 1.0 / (1.0 + math.exp(-score))
            rec = {"prompt": rec["prompt"], "response": rec["response"], "label": label,
                   **{k: v for k, v in rec.items() if k not in ("prompt", "response") and v is not None}}
            normalize_pointwise(rec)
            out.append(rec)
        return out

    # -------------------------------------------------------------- run
    def run(self) -> dict:
        c = self.cfg
        t0 = time.time()
        batches = self.pending_batches()
        skipped: dict[str, int] = {}
        made = {s: 0 for s in self.strategies}
        if batches:
            self._start()
        try:
            with tqdm(total=len(batches), desc="build-pairs", unit="batch", disable=not c.progress) as bar:
                for b, batch in batches:
                    outs = self._generate(b, batch)
                    rows, done = [], []
                    per: dict[str, int] = {}
                    for (pid, s), o in outs.items():
                        p = next(x for x in batch if x.id == pid)
                        new = self._rows(p, s, o, skipped)
                        rows += [(p, r) for r in new]
                        per[s] = per.get(s, 0) + len(new)
                        done.append((pid, s))
                    self._score(rows)
                    pair_rows = [r for _, r in rows]
                    point_rows = self._pointwise(pair_rows) if c.pointwise.enabled else []
                    self.store.commit({"pairs": pair_rows, "pointwise": point_rows}, done, per)
                    for s, n in per.items():
                        made[s] += n
                    bar.update(1)
                    bar.set_postfix(pairs=sum(self.store.counts.values()))
        finally:
            self._stop()
        total_units = len(self.prompts) * len(self.strategies)
        left = sum((p.id, s) not in self.store.done for p in self.prompts for s in self.strategies)
        summary = {"output_dir": str(self.out), "pairs_file": str(self.store.paths["pairs"]),
                   "pointwise_file": str(self.store.paths["pointwise"]) if c.pointwise.enabled else None,
                   "prompts": len(self.prompts), "duplicate_prompts_dropped": self.duplicates,
                   "units": total_units, "units_left": left,
                   "pairs_this_run": made, "pairs_total": dict(sorted(self.store.counts.items())),
                   "skipped_this_run": skipped, "batches_this_run": len(batches),
                   "wall_s": round(time.time() - t0, 1)}
        from hbat.models.atomic import atomic_write_bytes

        atomic_write_bytes(self.out / "summary.json", json.dumps(summary, indent=2).encode())
        return summary


def build_pairs(cfg: BuildPairsConfig, overwrite: bool = False) -> dict:
    return PairBuilder(cfg, overwrite=overwrite).run()
