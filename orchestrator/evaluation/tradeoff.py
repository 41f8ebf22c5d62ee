"""``tradeoff.png``: where each method (x sweep setting) lands between
following instructions and pleasing the preference signal.

The HBAT paper's question is a trade-off: preference training tends to undo
instruction tuning, and a method (or an EWC strength) is better if it moves
up in preference without moving left in instruction following. One point per
method x setting at the mean over seeds of two eval metrics; the points of a
method are joined in the order of the swept values and annotated with them,
so a sweep reads as a curve per method.

Default axes are metrics ``hbat compare`` computes per run from each final
checkpoint's evaluation, so every point has its own numbers:

* x (instruction following): ``demo/exact`` -- the demo task's reference
  answer appears in the response, which is what its instruction data teaches
  -- else ``rouge/rougeL`` (overlap with references), else IFEval. The
  held-out SFT loss (``eval/sft_loss``) is not one: it is a training-time
  probe in ``metrics.jsonl``, logged only with ``train.data.eval_sft``, not
  a per-run eval result.
* y (preference): ``reward/score`` -- the shared reward model's score -- else
  ``winrate/rm``, else ``winrate/judge``.

``tradeoff: {x: <metric>, y: <metric>}`` picks others (any metric name in
the table's results). Error bars: sd across seeds, or with one seed the 95%
bootstrap CI (as ``metrics.png``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from hbat.orchestrator.config import Section
from hbat.orchestrator.evaluation.sweep import fmt_value

log = logging.getLogger("hbat.compare")

X_DEFAULTS = ("demo/exact", "rouge/rougeL", "ifeval/prompt_strict", "ifeval/inst_strict")
Y_DEFAULTS = ("reward/score", "winrate/rm", "winrate/judge")
START = "start"


class TradeoffConfig(Section):
    """The axes of ``tradeoff.png``; null: the first of the defaults the runs computed (module doc)."""

    x: str | None = None  # instruction metric
    y: str | None = None  # preference metric

    def resolve(self, available: list[str]) -> dict:
        """``{"x", "y"}`` (None where no candidate was computed) and ``missing``: configured names absent."""
        out: dict = {"missing": []}
        for axis, given, defaults in (("x", self.x, X_DEFAULTS), ("y", self.y, Y_DEFAULTS)):
            if given is not None:
                out[axis] = given if given in available else None
                if given not in available:
                    out["missing"].append(given)
            else:
                out[axis] = next((m for m in defaults if m in available), None)
        return out


def _spread(s: dict, mean: float) -> tuple[float, float]:
    """(below, above) the mean: sd across seeds, or with one seed the bootstrap CI."""
    seeds = s.get("seeds") or []
    if len(seeds) > 1:
        sd = float(np.std(seeds, ddof=1))
        return sd, sd
    lo, hi = s.get("ci_low", mean), s.get("ci_high", mean)
    return (max(0.0, mean - lo) if lo == lo else 0.0), (max(0.0, hi - mean) if hi == hi else 0.0)


def tradeoff_points(results: dict, points: dict, x: str, y: str) -> list[dict]:
    """One point per run label that has both metrics: the mean over seeds of its
    per-seed means, and the spread. ``results``: compare's per-label metric
    summaries (``seeds`` = per-seed means); ``points``: label -> ``{method,
    setting}`` in sweep order (the untrained model, when evaluated, comes first)."""
    order = ([(START, {"method": START, "setting": {}})] if START in results else []) + list(points.items())
    out = []
    for name, info in order:
        sx, sy = results.get(name, {}).get(x), results.get(name, {}).get(y)
        if not sx or not sy or not sx.get("seeds") or not sy.get("seeds"):
            continue
        mx, my = float(np.mean(sx["seeds"])), float(np.mean(sy["seeds"]))
        if math.isnan(mx) or math.isnan(my):
            continue
        out.append({"label": name, "method": info["method"], "setting": info["setting"], "x": mx, "y": my,
                    "x_err": _spread(sx, mx), "y_err": _spread(sy, my), "n_seeds": len(sx["seeds"])})
    return out


def _annotation(setting: dict) -> str:
    if len(setting) == 1:
        return fmt_value(next(iter(setting.values())))
    return ",".join(f"{k.rsplit('.', 1)[-1]}={fmt_value(v)}" for k, v in setting.items())


def plot_tradeoff(summary: dict, out: str | Path) -> list[dict] | None:
    """Draw ``tradeoff.png`` from a compare summary; returns the points drawn
    (None, and a warning, when the runs lack either metric)."""
    axes = summary.get("tradeoff") or {}
    x, y = axes.get("x"), axes.get("y")
    if axes.get("missing"):
        log.warning("tradeoff: %s not computed by these runs (metrics: %s)", ", ".join(axes["missing"]),
                    ", ".join(summary.get("all_metrics", [])))
    if not x or not y:
        return None
    pts = tradeoff_points(summary["results"], summary.get("points", {}), x, y)
    if not pts:
        log.warning("tradeoff: no run has both %s and %s", x, y)
        return None
    from hbat.orchestrator.evaluation.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 5.0))
    colors = plt.get_cmap("tab10")
    methods = list(dict.fromkeys(p["method"] for p in pts))
    for i, m in enumerate(methods):
        mine = [p for p in pts if p["method"] == m]
        color = "grey" if m == START else colors(i % 10)
        xs, ys = [p["x"] for p in mine], [p["y"] for p in mine]
        xerr = np.array([p["x_err"] for p in mine]).T
        yerr = np.array([p["y_err"] for p in mine]).T
        swept = ", ".join(mine[-1]["setting"])  # the legend names the swept key(s)
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="*" if m == START else "-o", color=color,
                    ms=9 if m == START else 5, lw=1.2, capsize=3, label=f"{m} ({swept})" if swept else m)
        for p in mine:
            if p["setting"]:
                ax.annotate(_annotation(p["setting"]), (p["x"], p["y"]), textcoords="offset points", xytext=(5, 4),
                            fontsize=7, color=color)
    ax.set_xlabel(f"{x} (instruction following)")
    ax.set_ylabel(f"{y} (preference)")
    seeds = summary.get("seeds", [])
    swept = ", ".join(summary.get("sweep") or {}) or "no sweep"
    ax.set_title(f"{summary.get('name', 'compare')}: {swept}; mean over {len(seeds)} seed(s), bars = "
                 + ("sd across seeds" if len(seeds) > 1 else "95% bootstrap CI"), fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return pts
