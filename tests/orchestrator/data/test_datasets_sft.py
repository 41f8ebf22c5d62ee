"""SFTDataset: formats, rendering, loss masks and record errors."""

from __future__ import annotations

import logging

import pytest

from hbat.orchestrator.data import DataError, SFTDataset

IM_END = "<|im_end|>"


def chat(*turns):
    roles = {"s": "system", "u": "user", "a": "assistant", "t": "tool"}
    return [{"role": roles[r], "content": c} for r, c in turns]


def test_prompt_response_jsonl(tmp_path, chatml_tokenizer, h):
    p = h.write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"prompt": "what is two plus two", "response": "four"},
            {"prompt": "hello", "completion": "hello world"},
        ],
    )
    ds = SFTDataset.from_file(p, chatml_tokenizer)
    assert len(ds) == 2 and ds.source == str(p) and ds.skipped == 0
    ex = ds[0]
    assert set(ex) == {"input_ids", "loss_mask"}
    assert len(ex["input_ids"]) == len(ex["loss_mask"])
    assert chatml_tokenizer.decode(ex["input_ids"]) == (
        "<|im_start|>user\nwhat is two plus two<|im_end|>\n<|im_start|>assistant\nfour<|im_end|>"
    )
    assert h.masked_text(chatml_tokenizer, ex) == "four" + IM_END
    assert h.masked_text(chatml_tokenizer, ds[1]) == "hello world" + IM_END  # "completion" alias
    # the prompt part is exactly the rendered generation prompt
    prompt = chatml_tokenizer.apply_chat_template(
        chat(("u", "hello")), add_generation_prompt=True, tokenize=False
    )
    n_prompt = ds[1]["loss_mask"].index(1)
    assert chatml_tokenizer.decode(ds[1]["input_ids"][:n_prompt]) == prompt
    assert ds.end_token_id == chatml_tokenizer.convert_tokens_to_ids(IM_END)
    assert ds.origin(1) == f"{p}, line 2"


def test_parquet_conversational(tmp_path, chatml_tokenizer, h):
    recs = [{"messages": chat(("s", "be good"), ("u", "why is sky blue"), ("a", "because light scatters"))}]
    ds = SFTDataset.from_file(h.write_parquet(tmp_path / "sft.parquet", recs), chatml_tokenizer)
    assert h.masked_text(chatml_tokenizer, ds[0]) == "because light scatters" + IM_END
    text = chatml_tokenizer.decode(ds[0]["input_ids"])
    assert text.startswith("<|im_start|>system\nbe good<|im_end|>\n<|im_start|>user\n")


def test_multi_turn_all_assistant_turns(chatml_tokenizer, h):
    msgs = chat(("u", "hello"), ("a", "yes"), ("u", "why"), ("t", "tool says no"), ("a", "because"))
    ds = SFTDataset.from_records([{"messages": msgs}], chatml_tokenizer)
    assert h.masked_text(chatml_tokenizer, ds[0]) == "yes" + IM_END + "because" + IM_END
    # the whole sequence is the template's rendering of the conversation
    full = chatml_tokenizer.apply_chat_template(msgs, tokenize=False)
    assert chatml_tokenizer.decode(ds[0]["input_ids"]) == full.rstrip("\n")
    last = SFTDataset.from_records([{"messages": msgs}], chatml_tokenizer, assistant_loss="last")
    assert h.masked_text(chatml_tokenizer, last[0]) == "because" + IM_END
    assert last[0]["input_ids"] == ds[0]["input_ids"]


def test_leading_assistant_greeting_is_context(chatml_tokenizer, h):
    msgs = chat(("a", "hello"), ("u", "tell me more"), ("a", "sure"))
    ds = SFTDataset.from_records([{"messages": msgs}], chatml_tokenizer)
    assert h.masked_text(chatml_tokenizer, ds[0]) == "sure" + IM_END


def test_trl_conversational_prompt_completion(chatml_tokenizer, h):
    rec = {"prompt": chat(("u", "capital of france")), "completion": chat(("a", "paris"))}
    ds = SFTDataset.from_records([rec], chatml_tokenizer)
    assert h.masked_text(chatml_tokenizer, ds[0]) == "paris" + IM_END
    # completion repeating the prompt messages: the repeat is dropped
    rec2 = {
        "prompt": chat(("u", "capital of france")),
        "completion": chat(("u", "capital of france"), ("a", "paris")),
    }
    assert SFTDataset.from_records([rec2], chatml_tokenizer)[0] == ds[0]


def test_non_prefix_consistent_template_falls_back_to_last_turn(chatml_tokenizer, h, caplog):
    import copy

    tok = copy.deepcopy(chatml_tokenizer)
    # renders earlier assistant turns differently once a later turn exists
    tok.chat_template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['role'] == 'assistant' and not loop.last %}(old){% endif %}"
        "{{ message['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    msgs = chat(("u", "hello"), ("a", "yes"), ("u", "why"), ("a", "because"))
    with caplog.at_level(logging.WARNING):
        ds = SFTDataset.from_records([{"messages": msgs}, {"messages": msgs}], tok)
    assert h.masked_text(tok, ds[0]) == "because" + IM_END
    assert sum("prefix-consistent" in r.message for r in caplog.records) == 1


def test_plain_mode_without_template(plain_tokenizer, chatml_tokenizer, h):
    recs = [{"prompt": "two plus two is", "response": " four"}]
    for tok, kwargs in ((plain_tokenizer, {}), (chatml_tokenizer, {"chat_template": False})):
        ds = SFTDataset.from_records(recs, tok, **kwargs)
        assert tok.decode(ds[0]["input_ids"]) == "two plus two is four" + IM_END
        assert h.masked_text(tok, ds[0]) == " four" + IM_END


def test_plain_mode_bos_prefix_and_eos(bos_tokenizer, h):
    ds = SFTDataset.from_records([{"prompt": "hello", "response": " world"}], bos_tokenizer)
    ex = ds[0]
    assert ex["input_ids"][0] == bos_tokenizer.bos_token_id
    assert ex["input_ids"].count(bos_tokenizer.bos_token_id) == 1
    assert h.masked_text(bos_tokenizer, ex) == " world<|endoftext|>"


def test_messages_need_a_template(tmp_path, plain_tokenizer, h):
    p = h.write_jsonl(
        tmp_path / "c.jsonl", [{"prompt": "a", "response": "b"}, {"messages": chat(("u", "a"), ("a", "b"))}]
    )
    with pytest.raises(DataError, match="needs a chat template") as ei:
        SFTDataset.from_file(p, plain_tokenizer)
    h.assert_located(ei.value, p, 2, "messages")


def test_text_parts_content_and_null_keys(chatml_tokenizer, h):
    msgs = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}],
            "name": None,
        },
        {"role": "assistant", "content": "yes"},
    ]
    ds = SFTDataset.from_records([{"messages": msgs}], chatml_tokenizer)
    assert "user\nhello world<|im_end|>" in chatml_tokenizer.decode(ds[0]["input_ids"])


def test_unicode_roundtrip(chatml_tokenizer, h):
    ds = SFTDataset.from_records([{"prompt": "héllo ✓", "response": "日本 ok"}], chatml_tokenizer)
    assert h.masked_text(chatml_tokenizer, ds[0]) == "日本 ok" + IM_END


def test_limit_and_indexing_returns_copies(chatml_tokenizer):
    recs = [{"prompt": f"q {i}", "response": f"a {i}"} for i in range(5)]
    ds = SFTDataset.from_records(recs, chatml_tokenizer, limit=3)
    assert len(ds) == 3
    ds[0]["input_ids"].append(-1)
    assert -1 not in ds[0]["input_ids"]
    assert ds[-1] == ds[2]
    with pytest.raises(ValueError):
        SFTDataset.from_records(recs, chatml_tokenizer, limit=0)


BAD_SFT = [
    (
        {"prompt": "q", "response": 3},
        "response",
        "expected a non-empty string or a list of messages, got int",
    ),
    ({"prompt": "q", "response": "   "}, "response", "got an empty string"),
    ({"prompt": "q", "completion": ""}, "completion", "got an empty string"),
    ({"prompt": 7, "response": "a"}, "prompt", "got int"),
    ({"prompt": "", "response": "a"}, "prompt", "got an empty string"),
    ({"prompt": "q"}, "response", "missing field"),
    ({"response": "a"}, "prompt", "missing field"),
    ({"text": "a"}, "prompt", "missing field"),
    ({"prompt": "q", "response": "a", "completion": "b"}, "completion", "not both"),
    ({"messages": "hello"}, "messages", "expected a list of messages, got string"),
    ({"messages": []}, "messages", "empty list"),
    ({"messages": ["hi"]}, "messages[0]", "expected a message object"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role", "missing field"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "missing field"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "got 'bot'"),
    ({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role", "got int"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "expected a string, got int"),
    ({"messages": chat(("s", "x"), ("u", "hi"))}, "messages", "no assistant turn"),
    (
        {"messages": chat(("u", "hi"), ("a", "yo"), ("u", "more"))},
        "messages[2].role",
        "last message must be from the assistant",
    ),
    ({"messages": chat(("u", "hi"), ("a", " "))}, "messages[1].content", "got an empty string"),
    ({"messages": chat(("a", "hi"))}, "messages", "no system/user/tool message"),
    ({"prompt": "q", "response": chat(("u", "x"))}, "response", "no assistant turn"),
]


@pytest.mark.parametrize("record,field,reason", BAD_SFT)
def test_bad_records_name_file_line_field(tmp_path, chatml_tokenizer, h, record, field, reason):
    good = {"prompt": "hi", "response": "yes"}
    p = h.write_jsonl(tmp_path / "train.jsonl", [good, good, record])
    with pytest.raises(DataError) as ei:
        SFTDataset.from_file(p, chatml_tokenizer)
    h.assert_located(ei.value, p, 3, field)
    assert reason in str(ei.value)


def test_bad_record_in_parquet_says_row(tmp_path, chatml_tokenizer, h):
    recs = [{"prompt": "hi", "response": "yes"}, {"prompt": "hi", "response": None}]
    p = h.write_parquet(tmp_path / "train.parquet", recs)
    with pytest.raises(DataError) as ei:
        SFTDataset.from_file(p, chatml_tokenizer)
    h.assert_located(ei.value, p, 2, "response", unit="row")


def test_bad_record_in_memory_says_record(chatml_tokenizer, h):
    with pytest.raises(DataError) as ei:
        SFTDataset.from_records(
            [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": 1}], chatml_tokenizer
        )
    assert str(ei.value).startswith("<memory>, record 2, field 'response': ")
    with pytest.raises(DataError, match="record 1: expected a record object"):
        SFTDataset.from_records(["text"], chatml_tokenizer)
    with pytest.raises(DataError, match="no records"):
        SFTDataset.from_records([], chatml_tokenizer)


def test_template_failure_is_a_data_error(chatml_tokenizer, h):
    import copy

    tok = copy.deepcopy(chatml_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(DataError, match="chat template failed") as ei:
        SFTDataset.from_records([{"messages": chat(("u", "a"), ("t", "b"), ("a", "c"))}], tok)
    assert ei.value.line == 1 and ei.value.field == "messages"


def test_lead_tiny_tokenizer(h):
    from hbat.models import tiny

    tok = tiny.build_tiny_tokenizer()
    ds = SFTDataset.from_records([{"prompt": "hello", "response": "world"}], tok)
    assert h.masked_text(tok, ds[0]) == "world" + tok.eos_token


def test_directory_of_files_error_names_the_right_file(tmp_path, chatml_tokenizer, h):
    d = tmp_path / "train"
    d.mkdir()
    h.write_jsonl(d / "part-0.jsonl", [{"prompt": "a", "response": "b"}] * 2)
    h.write_parquet(d / "part-1.parquet", [{"prompt": "a", "response": "b"}])
    ds = SFTDataset.from_file(d, chatml_tokenizer)
    assert len(ds) == 3 and ds.source == str(d)
    assert ds.origin(2).endswith("part-1.parquet, row 1")
    bad = h.write_jsonl(
        d / "part-2.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": ""}]
    )
    with pytest.raises(DataError) as ei:
        SFTDataset.from_file(d, chatml_tokenizer)
    h.assert_located(ei.value, bad, 2, "response")
    assert len(SFTDataset.from_file(d / "part-0*", chatml_tokenizer)) == 2
