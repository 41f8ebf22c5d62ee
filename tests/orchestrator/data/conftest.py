"""Fixtures for the data-layer tests: a small ChatML BPE tokenizer trained on
the spot (no model hub), variants without a chat template / with a BOS
post-processor, and helpers writing JSONL / Parquet files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "the quick brown fox jumps over the lazy dog hello world what is two plus two "
    "answer four five six seven eight nine ten paris france capital of city country "
    "please explain why sky is blue because light scatters good bad yes no maybe "
    "assistant user system tool question reply thanks sure here you are a an and or "
    "not it this that with for on in at to from by be was were will would can could "
    "sorry i do know tell me more about cats dogs birds fish water fire earth air"
).split()


def _corpus() -> list[str]:
    n = len(_WORDS)
    return [" ".join(_WORDS[(i * 7 + j) % n] for j in range(24)) for i in range(60)]


@pytest.fixture(scope="session")
def chatml_tokenizer():
    """ByteLevel BPE (vocab ~400), eos <|im_end|>, pad <|endoftext|>, ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    hf.chat_template = CHATML
    return hf


@pytest.fixture(scope="session")
def plain_tokenizer(chatml_tokenizer):
    """Same vocabulary, no chat template (a base model's tokenizer)."""
    tok = copy.deepcopy(chatml_tokenizer)
    tok.chat_template = None
    return tok


@pytest.fixture(scope="session")
def bos_tokenizer(chatml_tokenizer):
    """No chat template, eos <|endoftext|>, and a post-processor that adds BOS <|im_start|>."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(chatml_tokenizer.backend_tokenizer)
    bos_id = backend.token_to_id("<|im_start|>")
    backend.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def write_jsonl(path: Path, records: list) -> Path:
    """Each item: a dict/list (dumped as JSON) or a raw str (written as is)."""
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write((rec if isinstance(rec, str) else json.dumps(rec)) + "\n")
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def masked_text(tokenizer, example: dict, ids_key: str = "input_ids", mask_key: str = "loss_mask") -> str:
    ids = [t for t, m in zip(example[ids_key], example[mask_key]) if m]
    return tokenizer.decode(ids, skip_special_tokens=False)


def assert_located(exc, path, number: int | None, field: str | None, unit: str = "line") -> None:
    """The DataError names the file, the line/row and the field."""
    text = str(exc)
    name = Path(str(path)).name
    assert name in text, text
    assert exc.path is not None and Path(exc.path).name == name
    if number is not None:
        assert f"{unit} {number}" in text, text
        assert exc.line == number
    if field is not None:
        assert f"field '{field}'" in text, text
        assert exc.field == field


@pytest.fixture
def h():
    """Helper functions (a fixture so test modules need not import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        write_jsonl=write_jsonl,
        write_parquet=write_parquet,
        masked_text=masked_text,
        assert_located=assert_located,
    )
