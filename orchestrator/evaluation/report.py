"""Markdown tables for ``hbat eval`` and ``hbat compare`` (printed and written)."""

from __future__ import annotations

import math


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def cell(mean: float, lo: float, hi: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


def eval_markdown(res: dict) -> str:
    lines = [f"## hbat eval: {res['name']}", "",
             f"model `{res['model']}` on `{res['eval_set']}` ({res['n_examples']} prompts, fingerprint "
             f"{res['eval_set_fingerprint']}); suites: {', '.join(res['suites'])}; decoding: "
             + ("greedy" if res["decoding"]["temperature"] == 0 else f"temperature {res['decoding']['temperature']}")
             + f", max {res['decoding']['max_new_tokens']} new tokens.", "",
             "| metric | mean | 95% CI (bootstrap) | std | n |", "|---|---|---|---|---|"]
    for k, s in res["metrics"].items():
        lines.append(f"| {k} | {fmt(s['mean'])} | [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}] | {fmt(s['std'])} "
                     f"| {s['n']} |")
    dist = res.get("extra", {}).get("reward_distribution")
    if dist:
        q = dist["quantiles"]
        lines += ["", f"reward distribution: min {fmt(dist['min'])}, p10 {fmt(q['p10'])}, p50 {fmt(q['p50'])}, "
                      f"p90 {fmt(q['p90'])}, max {fmt(dist['max'])}"]
    ife = res.get("extra", {}).get("ifeval")
    if ife and ife.get("skipped_instructions"):
        lines += ["", f"IFEval: {ife['skipped_instructions']} instruction(s) left out "
                      f"({', '.join(ife['skipped_ids'])}: NLTK punkt_tab data absent)"]
    if res.get("baseline"):
        lines += ["", f"win rates are against `{res['baseline']}`."]
    return "\n".join(lines) + "\n"


def compare_markdown(summary: dict) -> str:
    """The comparison table: one row per method, ``mean [95% CI]`` per metric."""
    metrics = summary["table_metrics"]
    methods = summary["methods"]
    head = ["method"] + metrics
    lines = [f"## hbat compare: {summary['name']}", "",
             f"{len(summary['seeds'])} seed(s) {summary['seeds']}, {summary['n_examples']} eval prompts, "
             f"wall time {summary['wall_s'] / 60:.1f} min. Cells: mean over seeds [95% CI, two-level bootstrap "
             "over seeds and prompts]."
             + (f" Win rates are against `{summary['baseline']}`." if summary.get("baseline") else ""),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sweep = summary.get("sweep")
    if sweep:  # before the table: what the labels mean and which methods ran once
        swept = {p["method"] for p in summary["points"].values() if p["setting"]}
        once = [m for m, p in summary["points"].items() if not p["setting"]]
        note = ("Sweep: " + "; ".join(f"`{k}` in {v}" for k, v in sweep.items())
                + ", one run per method x setting x seed" + (f" ({', '.join(sorted(swept))})" if swept else ""))
        if once:
            note += f"; run once, as the sweep cannot change their training: {', '.join(once)}"
        lines[4:4] = [note + ".", ""]
    for m in methods:
        row = [m]
        for k in metrics:
            s = summary["results"].get(m, {}).get(k)
            row.append(cell(s["mean"], s["ci_low"], s["ci_high"]) if s else "—")
        lines.append("| " + " | ".join(row) + " |")
    if len(summary["seeds"]) > 1:
        lines += ["", "Per-seed means (seed noise):", "", "| method | " + " | ".join(metrics) + " |",
                  "|" + "---|" * (len(metrics) + 1)]
        for m in methods:
            row = [m]
            for k in metrics:
                s = summary["results"].get(m, {}).get(k)
                row.append(" / ".join(fmt(v) for v in s["seeds"]) if s else "—")
            lines.append("| " + " | ".join(row) + " |")
    if summary.get("contrasts"):
        lines += ["", "Paired differences (same seeds, same prompts; 95% CI by paired two-level bootstrap):", "",
                  "| contrast | metric | difference [95% CI] | per-seed differences | seed sd |",
                  "|---|---|---|---|---|"]
        for c in summary["contrasts"]:
            for k, d in c["metrics"].items():
                lines.append(f"| {c['a']} − {c['b']} | {k} | {cell(d['diff'], d['ci_low'], d['ci_high'])} | "
                             f"{', '.join(fmt(v) for v in d['seed_diffs'])} | {fmt(d['seed_std'])} |")
    t = summary.get("tradeoff") or {}
    if t.get("x") and t.get("y"):
        lines += ["", f"Trade-off (tradeoff.png): x = `{t['x']}` (instruction following), y = `{t['y']}` "
                      "(preference), mean over seeds per method x setting."]
    return "\n".join(lines) + "\n"
