"""Training curves as a PNG next to the metrics: reward and instruction loss
with phase boundaries, the picture that shows HBAT's tug-of-war."""

from __future__ import annotations

from pathlib import Path

from hbat.orchestrator.metrics import read_metrics

_PANELS = [
    ("ppo/score", "reward (PPO batch)"),
    ("pref/loss", "preference loss"),
    ("sft/loss", "SFT loss (train)"),
    ("eval/sft_loss", "SFT loss (held out)"),
    ("eval/reward", "reward (held-out greedy)"),
    ("ewc/penalty", "EWC penalty"),
]


def plot_training_curves(run_dir: str | Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(Path(run_dir))
    panels = [(k, t) for k, t in _PANELS if any(k in r for r in rows)]
    if not panels:
        return None
    bounds = [(r["step"], r.get("phase", "")) for r in rows if "phase/index" in r]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (key, title) in zip(axes[:, 0], panels):
        pts = [(r["step"], r[key]) for r in rows if key in r and r.get("phase") != "reward_model"]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="." if len(pts) < 50 else None, lw=1)
        for step, name in bounds:
            ax.axvline(step, color="grey", ls=":", lw=0.8)
        ax.set_ylabel(title, fontsize=8)
    for step, name in bounds:
        axes[0, 0].text(step, 1.02, name, transform=axes[0, 0].get_xaxis_transform(), fontsize=6, rotation=30)
    axes[-1, 0].set_xlabel("driver step")
    fig.tight_layout()
    out = Path(run_dir) / "training_curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
