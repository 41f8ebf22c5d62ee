"""Tiny random models for tests and CI: real architectures, seconds to build.

The tokenizer is a byte-level BPE trained in-process on a fixed corpus (so no
hub is needed) with SmolLM2's ChatML chat template and a pad token distinct
from EOS, so masking bugs that pad==eos would hide stay visible.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = """
the quick brown fox jumps over the lazy dog . a summary is short ; an answer is
helpful , honest and harmless . please write a short reply in one sentence .
what is the capital of france ? paris is the capital of france . explain why the
sky is blue : sunlight scatters off air molecules and blue light scatters most .
count to five : one two three four five . yes no maybe thanks hello goodbye
write a poem about the sea ; the sea is wide and deep and grey . 0 1 2 3 4 5 6 7 8 9
User Assistant system user assistant : , . ! ? ' " ( ) - + = * / < > [ ] { }
"""


def build_tiny_tokenizer(vocab_size: int = 384):
    """A small ``PreTrainedTokenizerFast`` with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_checkpoint(
    path: str | Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    head: str = "causal_lm",
) -> Path:
    """Write a random Llama checkpoint (+ tokenizer) loadable by ``from_pretrained``.

    ``head`` is ``causal_lm`` or ``sequence_classification`` (a reward model).
    """
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        num_labels=1,
    )
    torch.manual_seed(seed)
    cls = {"causal_lm": LlamaForCausalLM, "sequence_classification": LlamaForSequenceClassification}[head]
    model = cls(config)
    if getattr(model, "generation_config", None) is not None:  # causal LMs only
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
