"""Session-wide fixtures: tiny random checkpoints (seconds) and, for tests
marked ``slow``, the embedded SmolLM2-135M default."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from hbat.models import make_tiny_checkpoint

    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "policy", seed=0))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoint):
    from hbat.models import load_tokenizer

    return load_tokenizer(tiny_checkpoint)
