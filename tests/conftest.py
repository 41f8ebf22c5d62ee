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
def tiny_reward_checkpoint(tmp_path_factory):
    """A sequence-classification checkpoint on the tiny backbone (random score head)."""
    from hbat.models import make_tiny_checkpoint

    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_rm") / "reward", seed=1,
                                    head="sequence_classification"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoint):
    from hbat.models import load_tokenizer

    return load_tokenizer(tiny_checkpoint)


@pytest.fixture(scope="session")
def ray_local():
    """One local 2-CPU Ray for the whole session (actors, driver runs, Serve).

    If Ray is already up (another fixture started it), it is reused and left to
    its owner to shut down.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory) -> dict[str, str]:
    """The built-in demo task, small (32 records per file, 8 held out)."""
    from hbat.orchestrator.demo_data import make_demo_data

    paths = make_demo_data(tmp_path_factory.mktemp("demo"), n_sft=32, n_pairs=32, n_prompts=32, n_eval=8)
    return {k: str(v) for k, v in paths.items()}
