"""What a policy replica and a reward replica share: the request guard, one
thread for model work, one for loading, and hot weight swaps in
``reconfigure``.

Serve calls ``reconfigure(user_config)`` before a new replica takes traffic
and whenever ``user_config`` changes; the new engine is built on the loader
thread while the old one keeps answering the requests already running on it,
then replaces it in one assignment.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI

from hbat.deploy.errors import APIError
from hbat.deploy.guard import Guard, load_api_keys
from hbat.deploy.settings import WeightsConfig

log = logging.getLogger(__name__)


class ModelReplica:
    """Base of the Serve deployment classes; subclasses build their engine in ``_make_engine``."""

    what = "model"  # for messages: "model", "reward model"

    def _setup(self, args, app: FastAPI, work_thread: str) -> None:
        self.args = args
        self.limits = args.limits
        self.model_name = args.served_name()
        app.state.guard = Guard(api_keys=load_api_keys(args.api_key_env, args.api_key_file),
                                max_body_bytes=self.limits.max_body_bytes)
        if args.torch_threads:
            import torch

            torch.set_num_threads(args.torch_threads)
        # every model step runs on this one thread: requests interleave step by step
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=work_thread)
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="hbat-load")
        self.engine = None

    def _make_engine(self, cfg: WeightsConfig):
        raise NotImplementedError  # abstract: the policy or reward engine

    async def reconfigure(self, user_config: dict) -> None:
        cfg = WeightsConfig.model_validate(user_config)
        current = self.engine
        if current is not None and (current.checkpoint, current.weight_version) == (cfg.checkpoint, cfg.weight_version):
            return
        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(self._loader, lambda: self._make_engine(cfg))
        log.info("serving %s %s (weight_version=%s) as '%s'", self.what, cfg.checkpoint, cfg.weight_version,
                 self.model_name)

    def _engine(self):
        if self.engine is None:
            raise APIError(503, f"The {self.what} is still loading; retry shortly.", code="model_loading")
        return self.engine
