"""Verifiable instruction following in the IFEval format, scored with the
``if-verifiable`` package (the IFEval reference checkers).

Four numbers, as the IFEval paper reports them: prompt-level accuracy (every
instruction of a prompt followed) and instruction-level accuracy (followed
instructions / all instructions), each strict (the response as is) and loose
(also accepted if it passes after dropping its first / last line or markdown
asterisks).

Two things the library does quietly are made loud here: an instruction id it
does not know is an error (it would be skipped), and instructions whose
checker needs NLTK's ``punkt_tab`` data (sentence and word tokenisation) fail
with the command to install it, unless ``ifeval_missing_data: skip`` asks to
leave them out (the number left out is reported).
"""

from __future__ import annotations

from hbat.orchestrator.data import DataError
from hbat.orchestrator.evaluation.stats import Metric
from hbat.orchestrator.evaluation.suites.base import Context, Suite

#: checkers that tokenise with NLTK's punkt_tab model
NEEDS_PUNKT = {"length_constraints:number_sentences", "change_case:capital_word_frequency"}


def _registry() -> dict:
    import langdetect

    langdetect.DetectorFactory.seed = 0  # language detection is randomised otherwise
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    return INSTRUCTION_DICT


def punkt_available() -> bool:
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return True
    except LookupError:
        return False


def score_ifeval(prompts: list[str], responses: list[str], instruction_ids: list[list[str]],
                 kwargs: list[list[dict]], missing_data: str = "error") -> tuple[dict[str, Metric], dict]:
    """Per-example IFEval metrics (``None`` where an example has no instructions)
    and extras: per-instruction pass rates and how many instructions were left out."""
    from if_verifiable.common import evaluate_instructions

    registry = _registry()
    for i, ids in enumerate(instruction_ids):
        unknown = [x for x in ids if x not in registry]
        if unknown:
            raise DataError(f"unknown IFEval instruction id(s) {unknown}; known ids: {sorted(registry)}",
                            path="eval set", line=i + 1, field="instruction_id_list", unit="record")
    used = {x for ids in instruction_ids for x in ids}
    drop: set[str] = set()
    if used & NEEDS_PUNKT and not punkt_available():
        if missing_data == "error":
            raise RuntimeError(
                f"IFEval instructions {sorted(used & NEEDS_PUNKT)} need NLTK's 'punkt_tab' data, which is not "
                "installed: run `python -m nltk.downloader punkt_tab` (or point NLTK_DATA at a copy), or set "
                "eval.ifeval_missing_data: skip to leave these instructions out")
        drop = used & NEEDS_PUNKT
    names = ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose")
    vals: dict[str, list] = {k: [] for k in names}
    weights: list[float] = []
    per_id: dict[str, list[int]] = {}
    skipped = 0
    for prompt, resp, ids, kws in zip(prompts, responses, instruction_ids, kwargs):
        keep = [j for j, x in enumerate(ids) if x not in drop]
        skipped += len(ids) - len(keep)
        if not keep:
            for k in names:
                vals[k].append(None)
            weights.append(0.0)
            continue
        ids_k, kws_k = [ids[j] for j in keep], [kws[j] for j in keep]
        results, _ = evaluate_instructions(resp, ids_k, kws_k, prompt, registry)
        strict = [bool(r.strict_pass) for r in results] or [False] * len(ids_k)  # empty response: all fail
        loose = [bool(r.loose_pass) for r in results] or [False] * len(ids_k)
        for x, s, lo in zip(ids_k, strict, loose):
            c = per_id.setdefault(x, [0, 0, 0])
            c[0] += 1
            c[1] += s
            c[2] += lo
        n = len(ids_k)
        vals["prompt_strict"].append(float(all(strict)))
        vals["prompt_loose"].append(float(all(loose)))
        vals["inst_strict"].append(sum(strict) / n)
        vals["inst_loose"].append(sum(loose) / n)
        weights.append(float(n))
    metrics = {
        "ifeval/prompt_strict": Metric(vals["prompt_strict"]),
        "ifeval/prompt_loose": Metric(vals["prompt_loose"]),
        "ifeval/inst_strict": Metric(vals["inst_strict"], weights),
        "ifeval/inst_loose": Metric(vals["inst_loose"], weights),
    }
    extra = {"per_instruction": {x: {"n": c[0], "strict": c[1] / c[0], "loose": c[2] / c[0]}
                                 for x, c in sorted(per_id.items())},
             "skipped_instructions": skipped, "skipped_ids": sorted(drop)}
    return metrics, extra


class IFEvalSuite(Suite):
    name = "ifeval"
    description = "IFEval prompt/instruction-level accuracy, strict and loose (if-verifiable)"

    def missing(self, ctx: Context) -> str | None:
        if not any(ex.instruction_id_list for ex in ctx.examples):
            return "no example has an 'instruction_id_list'"
        return None

    def run(self, ctx: Context) -> dict[str, Metric]:
        metrics, extra = score_ifeval([ex.prompt_text for ex in ctx.examples], ctx.responses,
                                      [ex.instruction_id_list for ex in ctx.examples],
                                      [ex.kwargs for ex in ctx.examples], ctx.cfg.ifeval_missing_data)
        ctx.extra["ifeval"] = extra
        return metrics
