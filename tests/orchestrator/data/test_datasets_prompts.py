"""PromptDataset and the truncation options (max_prompt_len / max_len / on_overlong)."""

from __future__ import annotations

import logging

import pytest

from hbat.orchestrator.data import (
    DataError,
    PairwiseDataset,
    PointwiseDataset,
    PromptDataset,
    SFTDataset,
    fit_lengths,
)

IM_END = "<|im_end|>"
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)  # ~70+ tokens


def test_prompts_with_meta(tmp_path, chatml_tokenizer, h):
    recs = [
        {"prompt": "what is two plus two", "reference": "4", "id": 7},
        {
            "prompt": [
                {"role": "system", "content": "be short"},
                {"role": "user", "content": "capital of france"},
            ],
            "reference": "paris",
        },
    ]
    ds = PromptDataset.from_file(h.write_jsonl(tmp_path / "prompts.jsonl", recs), chatml_tokenizer)
    ex = ds[0]
    assert set(ex) == {"prompt_ids", "prompt_text", "meta"}
    expected = "<|im_start|>user\nwhat is two plus two<|im_end|>\n<|im_start|>assistant\n"
    assert ex["prompt_text"] == expected
    assert chatml_tokenizer.decode(ex["prompt_ids"]) == expected
    assert ex["meta"] == {"reference": "4", "id": 7}
    assert ds[1]["prompt_text"].startswith("<|im_start|>system\nbe short")
    assert ds[1]["meta"] == {"reference": "paris"}
    assert ds.end_token_id == chatml_tokenizer.convert_tokens_to_ids(IM_END)


def test_prompts_parquet_messages_key_and_plain(tmp_path, chatml_tokenizer, plain_tokenizer, h):
    recs = [{"messages": [{"role": "user", "content": "hello"}], "reference": "x"}]
    ds = PromptDataset.from_file(h.write_parquet(tmp_path / "p.parquet", recs), chatml_tokenizer)
    assert ds[0]["prompt_text"].endswith("<|im_start|>assistant\n")
    assert ds[0]["meta"] == {"reference": "x"}
    plain = PromptDataset.from_records([{"prompt": "two plus two is"}], plain_tokenizer)
    assert plain[0]["prompt_text"] == "two plus two is"
    assert plain_tokenizer.decode(plain[0]["prompt_ids"]) == "two plus two is"


BAD_PROMPTS = [
    ({"reference": "4"}, "prompt", "missing field"),
    ({"prompt": 3}, "prompt", "got int"),
    ({"prompt": " "}, "prompt", "empty string"),
    (
        {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        "prompt[1].role",
        "must not end with an assistant",
    ),
    ({"messages": [{"role": "usr", "content": "a"}]}, "messages[0].role", "got 'usr'"),
]


@pytest.mark.parametrize("record,field,reason", BAD_PROMPTS)
def test_prompt_errors(tmp_path, chatml_tokenizer, h, record, field, reason):
    p = h.write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "ok"}, record])
    with pytest.raises(DataError) as ei:
        PromptDataset.from_file(p, chatml_tokenizer)
    h.assert_located(ei.value, p, 2, field)
    assert reason in str(ei.value)


def test_overlong_prompt_is_an_error_by_default(tmp_path, chatml_tokenizer, h):
    p = h.write_jsonl(
        tmp_path / "sft.jsonl", [{"prompt": "hi", "response": "yes"}, {"prompt": LONG, "response": "yes"}]
    )
    with pytest.raises(DataError) as ei:
        SFTDataset.from_file(p, chatml_tokenizer, max_prompt_len=32, max_len=64)
    h.assert_located(ei.value, p, 2, "prompt")
    assert "longer than max_prompt_len=32" in str(ei.value) and "on_overlong" in str(ei.value)
    with pytest.raises(DataError) as ei:
        PromptDataset.from_file(p, chatml_tokenizer, max_prompt_len=32)
    h.assert_located(ei.value, p, 2, "prompt")
    msgs = h.write_jsonl(
        tmp_path / "m.jsonl",
        [{"messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": "ok"}]}],
    )
    with pytest.raises(DataError) as ei:
        SFTDataset.from_file(msgs, chatml_tokenizer, max_prompt_len=32, max_len=64)
    h.assert_located(ei.value, msgs, 1, "messages")


def test_truncate_keeps_prompt_end(chatml_tokenizer, h):
    recs = [{"prompt": LONG, "response": "four"}]
    ds = SFTDataset.from_records(
        recs, chatml_tokenizer, max_prompt_len=16, max_len=64, on_overlong="truncate"
    )
    ex = ds[0]
    assert ex["loss_mask"].index(1) == 16
    assert h.masked_text(chatml_tokenizer, ex) == "four" + IM_END
    assert chatml_tokenizer.decode(ex["input_ids"]).endswith(
        "<|im_end|>\n<|im_start|>assistant\nfour<|im_end|>"
    )
    assert ds.skipped == 0
    pr = PromptDataset.from_records(recs, chatml_tokenizer, max_prompt_len=16, on_overlong="truncate")
    assert len(pr[0]["prompt_ids"]) == 16
    assert pr[0]["prompt_text"].endswith("<|im_start|>assistant\n")
    assert pr[0]["prompt_text"] == chatml_tokenizer.decode(pr[0]["prompt_ids"])
    assert pr.truncated == 1


def test_skip_counts_and_warns(chatml_tokenizer, caplog):
    recs = [
        {"prompt": "hi", "chosen": "a", "rejected": "b"},
        {"prompt": LONG, "chosen": "a", "rejected": "b"},
    ] * 2
    with caplog.at_level(logging.WARNING):
        ds = PairwiseDataset.from_records(
            recs, chatml_tokenizer, max_prompt_len=32, max_len=64, on_overlong="skip"
        )
    assert len(ds) == 2 and ds.skipped == 2
    assert any("skipped 2 of 4" in r.message for r in caplog.records)
    assert [ds.origin(i) for i in range(2)] == ["<memory>, record 1", "<memory>, record 3"]
    with pytest.raises(DataError, match="no usable records"):
        PromptDataset.from_records([{"prompt": LONG}], chatml_tokenizer, max_prompt_len=8, on_overlong="skip")


def test_response_truncated_on_the_right(chatml_tokenizer, h, caplog):
    recs = [{"prompt": "hi", "response": LONG, "label": True}]
    with caplog.at_level(logging.WARNING):
        ds = PointwiseDataset.from_records(recs, chatml_tokenizer, max_prompt_len=16, max_len=24)
    ex = ds[0]
    assert len(ex["input_ids"]) == 24 and ds.truncated == 1
    assert ex["input_ids"][-1] != chatml_tokenizer.eos_token_id  # cut: no end token
    assert LONG.startswith(h.masked_text(chatml_tokenizer, ex))
    assert any("cut to fit" in r.message for r in caplog.records)
    # prompt exactly at the limit: still at least one response token
    n_prompt = SFTDataset.from_records([{"prompt": "hi", "response": "x"}], chatml_tokenizer)[0][
        "loss_mask"
    ].index(1)
    tight = SFTDataset.from_records(
        [{"prompt": "hi", "response": LONG}], chatml_tokenizer, max_prompt_len=n_prompt, max_len=n_prompt + 1
    )
    assert tight[0]["loss_mask"] == [0] * n_prompt + [1]


def test_no_prompt_limit_uses_max_len(chatml_tokenizer):
    with pytest.raises(DataError, match="max_len-1=8"):
        SFTDataset.from_records(
            [{"prompt": LONG, "response": "a"}], chatml_tokenizer, max_prompt_len=None, max_len=9
        )
    ds = SFTDataset.from_records(
        [{"prompt": LONG, "response": "a"}], chatml_tokenizer, max_prompt_len=None, max_len=None
    )
    assert len(ds[0]["input_ids"]) > 60


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_prompt_len": 64, "max_len": 64},
        {"max_prompt_len": 0},
        {"max_len": -1},
        {"on_overlong": "drop"},
        {"assistant_loss": "first"},
    ],
)
def test_bad_options_are_value_errors(chatml_tokenizer, kwargs):
    with pytest.raises(ValueError) as ei:
        SFTDataset.from_records([{"prompt": "a", "response": "b"}], chatml_tokenizer, **kwargs)
    assert not isinstance(ei.value, DataError)


def test_fit_lengths_unit():
    ids, mask = list(range(10)), [0] * 6 + [1] * 4
    assert fit_lengths(ids, mask, max_prompt_len=6, max_len=10, on_overlong="error") == (ids, mask, False)
    assert fit_lengths(ids, mask, max_prompt_len=4, max_len=100, on_overlong="truncate") == (
        ids[2:],
        mask[2:],
        False,
    )
    assert fit_lengths(ids, mask, max_prompt_len=4, max_len=5, on_overlong="truncate") == (
        ids[2:7],
        mask[2:7],
        True,
    )
    assert fit_lengths(ids, mask, max_prompt_len=4, max_len=5, on_overlong="skip") is None
    with pytest.raises(DataError) as ei:
        fit_lengths(ids, mask, max_prompt_len=4, max_len=5, on_overlong="error", field="chosen")
    assert ei.value.field == "chosen" and "prompt is 6 tokens" in str(ei.value)
