"""Fixtures for actor tests: one local Ray instance for the whole session.

If Ray is already running (another fixture, e.g. a project-wide ``ray_local``,
started it) it is reused and left for its owner to shut down.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
