"""Starting (or joining) Ray the same way from every entry point.

``train``, ``train-rm``, ``eval`` and ``compare`` all run actors that must
load models offline and keep quiet; one environment for every worker keeps
those settings in one place.
"""

from __future__ import annotations

import os

import ray

#: environment of every worker process: never reach a model hub, no tokenizer
#: thread pools fighting the torch threads, no per-load transformers chatter
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


def ensure_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True) -> bool:
    """Start local Ray (or join ``address``) unless Ray runs already; True if this call started it.

    No address (and no ``RAY_ADDRESS``, which a Ray job sets) starts a fresh
    local instance (``"local"``): plain ``ray.init()`` would join whatever
    cluster was started last on the machine -- another user's run, say --
    and place this run's actors in it. ``auto`` or ``ray://...`` join one
    on purpose.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
             runtime_env={"env_vars": WORKER_ENV}, log_to_driver=log_to_driver)
    return True
