"""Metric suites, chosen by name (``--suites reward,rouge,...``).

=========  =====================================================  ==========================
suite      metrics                                                needs
=========  =====================================================  ==========================
length     length/tokens, length/words, length/truncated          -
reward     reward/score (+ distribution in results.json)          reward_model
winrate    winrate/rm, reward/margin_vs_baseline                  reward_model + baseline
judge      winrate/judge, judge/consistency                       judge.url + baseline
rouge      rouge/rouge1, rouge/rouge2, rouge/rougeL               references
ifeval     ifeval/{prompt,inst}_{strict,loose}                    instruction_id_list
kl         kl/seq, kl/token, kl/logratio                          reference model
demo       demo/exact, demo/style                                 references (demo task)
=========  =====================================================  ==========================

``auto`` runs every suite whose inputs are present, except ``demo`` (only
meaningful on the demo task) and ``judge`` (costs money: only when asked for or
configured).
"""

from __future__ import annotations

from hbat.orchestrator.config import ConfigError
from hbat.orchestrator.evaluation.suites.base import Context, Suite
from hbat.orchestrator.evaluation.suites.ifeval import IFEvalSuite
from hbat.orchestrator.evaluation.suites.judge import JudgeSuite
from hbat.orchestrator.evaluation.suites.kl import KLSuite
from hbat.orchestrator.evaluation.suites.reward import RewardSuite, WinrateSuite
from hbat.orchestrator.evaluation.suites.text import DemoSuite, LengthSuite, RougeSuite

SUITES: dict[str, Suite] = {s.name: s for s in (
    LengthSuite(), RewardSuite(), WinrateSuite(), JudgeSuite(), RougeSuite(), IFEvalSuite(), KLSuite(), DemoSuite())}

_NOT_AUTO = {"demo"}


def select_suites(names, ctx: Context) -> list[Suite]:
    """Resolve ``auto`` or a list of names; an explicitly named suite whose
    inputs are missing is a :class:`ConfigError` (never a silent skip)."""
    if names == "auto":
        return [s for n, s in SUITES.items()
                if n not in _NOT_AUTO and (n != "judge" or ctx.cfg.judge is not None) and s.missing(ctx) is None]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ConfigError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    chosen = [SUITES[n] for n in dict.fromkeys(names)]
    for s in chosen:
        why = s.missing(ctx)
        if why:
            raise ConfigError(f"suite '{s.name}' cannot run: {why}")
    return chosen


__all__ = ["Context", "SUITES", "Suite", "select_suites"]
