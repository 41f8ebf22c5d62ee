"""Arguments of the Serve application builders, validated with pydantic.

The same dict arrives from ``hbat serve`` (built from CLI flags), from a
Serve config file (``applications[].args``) or from Python. Deployment
options follow Serve's own names (``num_replicas``, ``autoscaling_config``,
``ray_actor_options``, ``max_ongoing_requests``); a Serve config may also
override them per deployment under ``applications[].deployments``.

The checkpoint travels in the deployment's ``user_config``
(``{"checkpoint", "weight_version"}``): a replica loads it in
``reconfigure`` before it takes traffic, and changing it with
``serve deploy`` swaps weights on running replicas without a restart.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Limits(BaseModel):
    """Request limits; exceeding one is a 400 (413 for the body size)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(1024, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="chat max_tokens when the request names none")
    max_prompt_tokens: int | None = Field(None, ge=1, description="default: the model's context length")
    max_n: int = Field(8, ge=1, description="largest n (choices per prompt)")
    max_prompts: int = Field(16, ge=1, description="largest list of prompts in one /v1/completions request")
    max_batch: int = Field(64, ge=1, description="largest number of inputs in one /v1/reward request")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body")
    max_request_tokens: int = Field(8192, ge=1, description="largest n x (prompt + max_tokens) of one request: "
                                    "bounds its KV cache (deploy/README.md, memory per request); 400 above")
    max_concurrent_tokens: int = Field(32768, ge=1, description="the same summed over the requests a replica "
                                       "runs at once; a request that does not fit gets 429")

    @model_validator(mode="after")
    def _budget_fits(self):
        if self.max_concurrent_tokens < self.max_request_tokens:
            raise ValueError(f"max_concurrent_tokens ({self.max_concurrent_tokens}) must be at least "
                             f"max_request_tokens ({self.max_request_tokens}), or the largest request never runs")
        return self


class DeploymentOptions(BaseModel):
    """Serve deployment options (Serve's names); autoscaling wins over num_replicas."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(None, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    max_ongoing_requests: int = Field(16, ge=1)
    health_check_period_s: float | None = None
    graceful_shutdown_timeout_s: float | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set either num_replicas or autoscaling_config, not both")
        if self.autoscaling_config is not None:
            from ray.serve.config import AutoscalingConfig

            # Serve's own validation (min <= max, positive targets, ...)
            AutoscalingConfig(**self.autoscaling_config)
        return self

    def serve_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "ray_actor_options": dict(self.ray_actor_options),
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        if self.autoscaling_config is not None:
            opts["autoscaling_config"] = dict(self.autoscaling_config)
        else:
            opts["num_replicas"] = self.num_replicas or 1
        for key in ("health_check_period_s", "graceful_shutdown_timeout_s"):
            if getattr(self, key) is not None:
                opts[key] = getattr(self, key)
        return opts


class WeightsConfig(BaseModel):
    """A deployment's ``user_config``: which weights a replica serves."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(min_length=1)
    weight_version: int | str | None = None


class _AppArgs(DeploymentOptions):
    checkpoint: str = Field(min_length=1, description="HF folder (RUN_DIR/final), hub id or embedded short name")
    weight_version: int | str | None = None
    model_name: str | None = Field(None, description="id clients use in 'model'; default from the checkpoint path")
    dtype: str = "auto"
    device: str = "auto"
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per replica (default: Ray's)")
    api_key_env: str | None = None
    api_key_file: str | None = None
    limits: Limits = Field(default_factory=Limits)

    def weights(self) -> dict[str, Any]:
        return WeightsConfig(checkpoint=self.checkpoint, weight_version=self.weight_version).model_dump()

    def served_name(self) -> str:
        return self.model_name or default_model_name(self.checkpoint)


class PolicyAppArgs(_AppArgs):
    """Args of :func:`hbat.deploy.openai_app.build_app`."""

    backend: Literal["auto", "transformers", "vllm"] = "auto"
    vllm: dict[str, Any] = Field(
        default_factory=dict,
        description="extra LLMConfig fields for the vLLM backend (engine_kwargs, accelerator_type, ...)",
    )


class RewardAppArgs(_AppArgs):
    """Args of :func:`hbat.deploy.reward_app.build_app`."""

    max_batch_size: int = Field(16, ge=1, description="Serve request batching: requests per batch")
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)
    micro_batch: int = Field(16, ge=1, description="sequences per forward pass")
    max_ongoing_requests: int = Field(32, ge=1)


def default_model_name(checkpoint: str) -> str:
    """``runs/hbat-demo/final`` -> ``hbat-demo/final``; a short name stays as it is."""
    parts = [p for p in checkpoint.replace("\\", "/").rstrip("/").split("/") if p not in ("", ".")]
    if not parts:
        return "model"
    return "/".join(parts[-2:])
