"""Settings of ``hbat eval`` (also the ``eval:`` section of a compare config).

One pydantic tree, unknown keys rejected, like the training config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hbat.orchestrator.config import RoleResources, Section


class EvalResources(Section):
    """Ray resources of the evaluation actors (fractional CPUs on a laptop, GPUs on a cluster)."""

    address: str | None = None  # None -> local Ray (only when Ray is not running already)
    num_cpus: int | None = None  # for local Ray
    rollout: RoleResources = RoleResources(num_cpus=0.25)
    reward: RoleResources = RoleResources(num_cpus=0.25)
    kl: RoleResources = RoleResources(num_cpus=0.25)
    torch_threads: int | None = Field(None, ge=1)  # None -> min(4, CPUs of this machine)


class JudgeConfig(Section):
    """Pairwise LLM judge on any OpenAI-compatible chat endpoint (off unless ``url`` is set)."""

    url: str  # base URL (".../v1") or the full ".../chat/completions" URL
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never stored in results
    criteria: str = "helpful, correct, harmless and concise"
    max_workers: int = Field(4, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(3, ge=0)
    max_tokens: int = Field(16, gt=0)


class EvalConfig(Section):
    data: str | None = None  # the eval set (JSONL / JSON / Parquet); see evalset.py
    limit: int | None = Field(None, gt=0)
    # "auto": every suite whose inputs are present; or a list of names (see suites/)
    suites: Literal["auto"] | list[str] = "auto"
    reward_model: str | None = None  # reward / winrate suites
    reference: str | None = None  # KL suite: the reference (usually the starting) model
    baseline: str | None = None  # a model whose responses are the opponent in win rates
    baseline_responses: str | None = None  # or a responses.jsonl written by an earlier `hbat eval`
    judge: JudgeConfig | None = None
    max_new_tokens: int = Field(128, gt=0)
    temperature: float = Field(0.0, ge=0)  # 0 = greedy (default)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    seed: int = Field(0, ge=0)  # sampling seed (temperature > 0) and bootstrap seed
    batch_size: int = Field(8, gt=0)
    max_prompt_len: int = Field(1024, gt=0)  # longer prompts keep their last tokens
    chat_template: bool = True
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    backend: Literal["auto", "hf", "vllm"] = "auto"
    rouge_stemmer: bool = True
    ifeval_missing_data: Literal["error", "skip"] = "error"  # instructions needing NLTK punkt_tab when absent
    n_boot: int = Field(2000, ge=100)
    progress: bool = True
    resources: EvalResources = EvalResources()

    @model_validator(mode="after")
    def _one_baseline(self):
        if self.baseline and self.baseline_responses:
            raise ValueError("give baseline or baseline_responses, not both")
        return self
