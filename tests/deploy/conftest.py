"""Fixtures for the Serve tests: a tiny reward checkpoint and a local Ray."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_reward_checkpoint(tmp_path_factory, tiny_checkpoint):
    """A tiny sequence-classification checkpoint (random score head)."""
    from hbat.models import make_tiny_checkpoint

    path = tmp_path_factory.mktemp("tiny_rm") / "reward"
    try:
        return str(make_tiny_checkpoint(path, head="sequence_classification", seed=0))
    except AttributeError:
        # models.tiny writes generation_config, which a classification model lacks
        # (transformers 5.23): build the same thing from the causal-LM checkpoint.
        import torch

        from hbat.models import load_reward_model, load_tokenizer, save_checkpoint

        torch.manual_seed(0)
        model = load_reward_model(tiny_checkpoint)
        save_checkpoint(model, load_tokenizer(tiny_checkpoint), path)
        return str(path)


@pytest.fixture(scope="module")
def ray_for_serve(request):
    """Use the suite's ``ray_local`` fixture when the root conftest has one,
    else a 2-CPU local Ray for this module only (shut down after it, so
    other suites that call ``ray.init`` themselves are not disturbed)."""
    import ray

    try:
        request.getfixturevalue("ray_local")
        yield
        return
    except pytest.FixtureLookupError:
        pass
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    yield
    if started:
        ray.shutdown()
