"""Model loading: one place that turns a name (hub id, local folder, GGUF file or
an embedded short name like ``smollm2-135m``) into a policy, reference, reward
or critic model, so every actor loads weights the same way."""

from hbat.models.default import EMBEDDED_MODELS, resolve_model_path
from hbat.models.loader import (
    disable_dropout,
    load_causal_lm,
    load_critic,
    load_reward_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    save_checkpoint,
)
from hbat.models.precision import PRECISIONS, Precision, precision
from hbat.models.scoring import critic_values, response_token_logprobs, reward_scores
from hbat.models.tiny import build_tiny_tokenizer, make_tiny_checkpoint

__all__ = [
    "EMBEDDED_MODELS",
    "PRECISIONS",
    "Precision",
    "disable_dropout",
    "precision",
    "build_tiny_tokenizer",
    "critic_values",
    "load_causal_lm",
    "load_critic",
    "load_reward_model",
    "load_tokenizer",
    "make_tiny_checkpoint",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
    "reward_scores",
    "response_token_logprobs",
    "save_checkpoint",
]
