"""``orchestrator/config.py``: names that moved keep working, with a warning."""

from __future__ import annotations

import pytest

from hbat.orchestrator.config import validate_config


def test_dpo_section_is_the_deprecated_name_of_preference_loss(make_tree):
    tree = make_tree("hbat", "dpo")
    tree["dpo"] = {"beta": 0.3, "loss": "ipo"}
    with pytest.warns(FutureWarning, match="'dpo' is deprecated: use 'preference_loss'"):
        cfg = validate_config(tree)
    # merged over preference_loss: the old keys win, the rest stays
    assert (cfg.preference_loss.loss, cfg.preference_loss.beta) == ("ipo", 0.3)
    assert cfg.preference_loss.batch_size == tree["preference_loss"]["batch_size"]
    assert "dpo" not in cfg.model_dump()
