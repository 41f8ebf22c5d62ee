"""Comparison figures (matplotlib, Agg backend: no display needed).

``metrics.png``: one panel per table metric, a bar per method at the mean
over seeds, error bars = standard deviation across seeds (with one seed: the
bootstrap 95% CI), and a dot per seed.

``curves.png``: one panel per method: held-out reward (``eval/reward``, left
axis) and held-out SFT loss (``eval/sft_loss``, right axis; training
``sft/loss`` faint) against the driver step, every seed drawn, with the
phases shaded (green: instruction phase, red: preference phase).
"""

from __future__ import annotations

import math
from pathlib import Path

from hbat.orchestrator.metrics import read_metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_bars(summary: dict, out: str | Path) -> Path | None:
    metrics, methods = summary["table_metrics"], summary["methods"]
    if not metrics:
        return None
    plt = _plt()
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    colors = plt.get_cmap("tab20")
    for ax, key in zip(axes.flat, metrics):
        xs, means, errs = [], [], [[], []]
        for i, m in enumerate(methods):
            s = summary["results"].get(m, {}).get(key)
            if not s or s["mean"] != s["mean"]:
                continue
            xs.append(i)
            means.append(s["mean"])
            if len(s["seeds"]) > 1:
                e = s["seed_std"]
                errs[0].append(e)
                errs[1].append(e)
            else:
                errs[0].append(max(0.0, s["mean"] - s["ci_low"]))
                errs[1].append(max(0.0, s["ci_high"] - s["mean"]))
            ax.scatter([i] * len(s["seeds"]), s["seeds"], color="black", s=8, zorder=3)
        ax.bar(xs, means, yerr=errs, capsize=3, color=[colors(i % 20) for i in xs], alpha=0.85)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=7)
        ax.set_title(key, fontsize=9)
        ax.axhline(0, color="grey", lw=0.5)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    seeds = summary["seeds"]
    fig.suptitle(f"{summary['name']}: mean over {len(seeds)} seed(s); error bars "
                 + ("= sd across seeds" if len(seeds) > 1 else "= 95% bootstrap CI") + "; dots = seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def _phases(rows: list[dict]) -> list[tuple[int, int, str]]:
    starts = [(r["step"], r.get("phase", "")) for r in rows if "phase/index" in r]
    last = max((r["step"] for r in rows), default=0)
    return [(s, starts[i + 1][0] if i + 1 < len(starts) else last, name) for i, (s, name) in enumerate(starts)]


def plot_curves(runs: list[tuple[str, int, str]], out: str | Path) -> Path | None:
    """``runs``: (method, seed, run_dir) of every training run."""
    methods = list(dict.fromkeys(m for m, _, _ in runs))
    if not methods:
        return None
    plt = _plt()
    cols = min(3, len(methods))
    rows_n = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 3.2 * rows_n), squeeze=False)
    for ax, method in zip(axes.flat, methods):
        right = ax.twinx()
        shaded = False
        for m, seed, run_dir in runs:
            if m != method:
                continue
            rows = [r for r in read_metrics(Path(run_dir)) if r.get("phase") != "reward_model"]
            if not shaded:
                for a, b, name in _phases(rows):
                    ax.axvspan(a, max(b, a + 0.5), color="tab:green" if name.startswith("sft") else "tab:red",
                               alpha=0.08, lw=0)
                    ax.axvline(a, color="grey", ls=":", lw=0.6)
                shaded = True
            for key, axis, color, style in (("eval/reward", ax, "tab:blue", "-o"),
                                            ("eval/sft_loss", right, "tab:orange", "-s"),
                                            ("sft/loss", right, "tab:orange", ":")):
                pts = [(r["step"], r[key]) for r in rows if key in r]
                if pts:
                    xs, ys = zip(*pts)
                    axis.plot(xs, ys, style, color=color, ms=3, lw=1, alpha=0.35 if key == "sft/loss" else 0.9,
                              label=f"{key} s{seed}")
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("driver step", fontsize=7)
        ax.set_ylabel("eval/reward", color="tab:blue", fontsize=7)
        right.set_ylabel("SFT loss (eval ■, train ┄)", color="tab:orange", fontsize=7)
        for a in (ax, right):
            a.tick_params(labelsize=7)
            a.ticklabel_format(axis="y", useOffset=False)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.suptitle("training curves: held-out reward and SFT loss; shading = instruction (green) / preference (red) "
                 "phases", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
