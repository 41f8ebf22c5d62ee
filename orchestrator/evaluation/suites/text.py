"""Suites that read only the text: response length, ROUGE, the demo task's checks."""

from __future__ import annotations

from hbat.orchestrator.demo_data import OPENERS, contains_reference
from hbat.orchestrator.evaluation.stats import Metric
from hbat.orchestrator.evaluation.suites.base import Context, Suite


class LengthSuite(Suite):
    name = "length"
    description = "response length in tokens and words; share cut off by max_new_tokens"

    def run(self, ctx: Context) -> dict[str, Metric]:
        return {
            "length/tokens": Metric([float(n) for n in ctx.gen.tokens]),
            "length/words": Metric([float(len(r.split())) for r in ctx.responses]),
            "length/truncated": Metric([float(t) for t in ctx.gen.truncated]),
        }


def _need_references(ctx: Context) -> str | None:
    if not any(ex.references for ex in ctx.examples):
        return "no example has a 'reference'"
    return None


class RougeSuite(Suite):
    """ROUGE-1/2/L F1 (rouge-score package, Porter stemming by default, as
    summarisation papers report); with several references the best one counts."""

    name = "rouge"
    description = "ROUGE-1/2/L F1 against the reference(s)"
    TYPES = ("rouge1", "rouge2", "rougeL")

    def missing(self, ctx: Context) -> str | None:
        return _need_references(ctx)

    def run(self, ctx: Context) -> dict[str, Metric]:
        return rouge_metrics(ctx.responses, [ex.references for ex in ctx.examples], ctx.cfg.rouge_stemmer)


def rouge_metrics(responses: list[str], references: list[list[str]], stemmer: bool = True) -> dict[str, Metric]:
    import logging

    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs every scorer it builds
    scorer = rouge_scorer.RougeScorer(list(RougeSuite.TYPES), use_stemmer=stemmer)
    out: dict[str, list] = {t: [] for t in RougeSuite.TYPES}
    for resp, refs in zip(responses, references):
        if not refs:
            for t in RougeSuite.TYPES:
                out[t].append(None)
            continue
        scores = [scorer.score(ref, resp) for ref in refs]
        for t in RougeSuite.TYPES:
            out[t].append(max(s[t].fmeasure for s in scores))
    return {f"rouge/{t}": Metric(v) for t, v in out.items()}


class DemoSuite(Suite):
    """The built-in demo task (``hbat make-demo-data``): ``demo/exact`` is 1 when
    the reference answer appears in the response (the instruction objective),
    ``demo/style`` when a warm opener such as "Great question!" does (what the
    preference pairs reward)."""

    name = "demo"
    description = "demo task: reference answer present (exact), warm opener present (style)"

    def missing(self, ctx: Context) -> str | None:
        return _need_references(ctx)

    def run(self, ctx: Context) -> dict[str, Metric]:
        exact, style = [], []
        openers = [o.lower() for o in OPENERS]
        for ex, resp in zip(ctx.examples, ctx.responses):
            exact.append(max((contains_reference(ex.prompt_text, resp, {"reference": r}) for r in ex.references),
                             default=None))
            style.append(float(any(o in resp.lower() for o in openers)))
        return {"demo/exact": Metric(exact), "demo/style": Metric(style)}
