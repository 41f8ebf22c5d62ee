"""The GPU backend: Ray's own ``ray.serve.llm`` (vLLM behind an
OpenAI-compatible ingress with Serve autoscaling) instead of re-writing one.

``import ray.serve.llm`` fails without vLLM, so everything here is imported
lazily. The same builder args map onto ``LLMConfig``:

* ``checkpoint`` -> ``model_loading_config.model_source`` (embedded short
  names are converted to a local folder first), ``model_name`` -> ``model_id``;
* ``num_replicas`` / ``autoscaling_config`` / ``max_ongoing_requests`` ->
  ``deployment_config``;
* ``limits.max_prompt_tokens``/context -> ``engine_kwargs.max_model_len`` only
  if given; ``dtype`` -> ``engine_kwargs.dtype``;
* anything under ``vllm:`` is merged into the ``LLMConfig`` as is
  (``engine_kwargs``, ``accelerator_type``, ``placement_group_config``,
  ``runtime_env``, ...).

Ray's ingress does not check API keys, so asking for one with this backend
is an error rather than an unauthenticated server: put a gateway in front,
or use the transformers backend.
"""

from __future__ import annotations

from typing import Any

from hbat.actors.backends import resolve_backend as shared_resolve
from hbat.actors.backends import vllm_installed  # noqa: F401 - re-exported (tests, callers)
from hbat.deploy.settings import PolicyAppArgs


def _gpus_available() -> bool:
    try:
        import ray

        if ray.is_initialized():
            return ray.cluster_resources().get("GPU", 0) > 0
    except Exception:  # noqa: BLE001 - no cluster: look at this machine
        pass
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def resolve_backend(args: PolicyAppArgs) -> str:
    """``auto`` -> ``vllm`` when vLLM is installed, the cluster has GPUs and no CPU
    device was asked for (the shared rule of :func:`hbat.actors.backends.resolve_backend`)."""
    if args.backend == "auto" and args.device == "cpu":
        return "transformers"
    gpus = _gpus_available() if args.backend == "auto" else None
    return "vllm" if shared_resolve(args.backend, gpus=gpus) == "vllm" else "transformers"


def llm_config_dict(args: PolicyAppArgs) -> dict[str, Any]:
    """The ``LLMConfig`` (as a dict) for these args; pure, testable without vLLM."""
    from hbat.models import resolve_model_path

    deployment: dict[str, Any] = {"max_ongoing_requests": args.max_ongoing_requests}
    if args.autoscaling_config is not None:
        deployment["autoscaling_config"] = dict(args.autoscaling_config)
    else:
        deployment["num_replicas"] = args.num_replicas or 1
    engine_kwargs: dict[str, Any] = {}
    if args.dtype != "auto":
        engine_kwargs["dtype"] = args.dtype
    if args.limits.max_prompt_tokens:
        engine_kwargs["max_model_len"] = args.limits.max_prompt_tokens + args.limits.max_tokens
    cfg: dict[str, Any] = {
        "model_loading_config": {
            "model_id": args.served_name(),
            "model_source": resolve_model_path(args.checkpoint),
        },
        "deployment_config": deployment,
        "engine_kwargs": engine_kwargs,
    }
    extra = dict(args.vllm)
    engine_kwargs.update(extra.pop("engine_kwargs", {}) or {})
    deployment.update(extra.pop("deployment_config", {}) or {})
    cfg.update(extra)
    return cfg


def build_vllm_app(args: PolicyAppArgs):
    if args.api_key_env or args.api_key_file:
        raise ValueError(
            "API keys are enforced by the transformers backend only; Ray's vLLM ingress does not check them. "
            "Use backend 'transformers' or put an authenticating gateway in front of the vLLM app."
        )
    from ray.serve.llm import LLMConfig, build_openai_app

    return build_openai_app({"llm_configs": [LLMConfig(**llm_config_dict(args))]})
