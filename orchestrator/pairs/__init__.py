"""Preference data the seed papers build: PopAlign's six contrast strategies.

``hbat build-pairs --config X`` turns a prompts file into preference pairs
without human labels (``builder.py``): each strategy (``strategies.py``, the
one registry of names) contrasts two generations whose quality it can
predict -- a guiding vs a misleading prefix, good vs bad demonstrations,
elicited vs direct answers, a larger vs a smaller model, a higher vs a lower
ranked model, a refined vs a draft answer. Rows keep their provenance (which
strategy, both sources, ranks, strength gap and scores), so the DPO
curriculum (``hbat.orchestrator.data.curriculum``) can order them from easy
to hard. See docs/preference_data.md.
"""

from hbat.orchestrator.pairs.config import BuildPairsConfig, load_build_config
from hbat.orchestrator.pairs.strategies import STRATEGIES, STRATEGY_NAMES

__all__ = ["BuildPairsConfig", "STRATEGIES", "STRATEGY_NAMES", "build_pairs", "load_build_config"]


def build_pairs(cfg: BuildPairsConfig, overwrite: bool = False) -> dict:
    from hbat.orchestrator.pairs.builder import build_pairs as _build

    return _build(cfg, overwrite=overwrite)
