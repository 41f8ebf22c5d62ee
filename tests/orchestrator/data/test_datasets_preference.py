"""PairwiseDataset and PointwiseDataset: formats, masks and errors."""

from __future__ import annotations

import math

import pytest

from hbat.orchestrator.data import DataError, PairwiseDataset, PointwiseDataset

IM_END = "<|im_end|>"


def chat(*turns):
    roles = {"s": "system", "u": "user", "a": "assistant", "t": "tool"}
    return [{"role": roles[r], "content": c} for r, c in turns]


def _prompt_len(mask):
    return mask.index(1)


def _check_pair(tok, h, ex, chosen, rejected):
    assert set(ex) == {"chosen_input_ids", "chosen_loss_mask", "rejected_input_ids", "rejected_loss_mask"}
    assert h.masked_text(tok, ex, "chosen_input_ids", "chosen_loss_mask") == chosen + IM_END
    assert h.masked_text(tok, ex, "rejected_input_ids", "rejected_loss_mask") == rejected + IM_END
    n = _prompt_len(ex["chosen_loss_mask"])
    assert n == _prompt_len(ex["rejected_loss_mask"])
    assert ex["chosen_input_ids"][:n] == ex["rejected_input_ids"][:n]


def test_pairwise_strings_jsonl_and_parquet(tmp_path, chatml_tokenizer, h):
    recs = [
        {"prompt": "what is two plus two", "chosen": "four", "rejected": "five"},
        {"prompt": "hello", "chosen": "same", "rejected": "same"},  # chosen == rejected is allowed
    ]
    for path in (h.write_jsonl(tmp_path / "p.jsonl", recs), h.write_parquet(tmp_path / "p.parquet", recs)):
        ds = PairwiseDataset.from_file(path, chatml_tokenizer)
        assert len(ds) == 2
        _check_pair(chatml_tokenizer, h, ds[0], "four", "five")
        _check_pair(chatml_tokenizer, h, ds[1], "same", "same")
        n = _prompt_len(ds[0]["chosen_loss_mask"])
        assert chatml_tokenizer.decode(ds[0]["chosen_input_ids"][:n]) == (
            "<|im_start|>user\nwhat is two plus two<|im_end|>\n<|im_start|>assistant\n"
        )


def test_pairwise_trl_conversational(tmp_path, chatml_tokenizer, h):
    rec = {
        "prompt": chat(("s", "be good"), ("u", "capital of france")),
        "chosen": chat(("a", "paris")),
        "rejected": chat(("a", "i do not know")),
    }
    p = h.write_parquet(tmp_path / "conv.parquet", [rec])
    ds = PairwiseDataset.from_file(p, chatml_tokenizer)
    _check_pair(chatml_tokenizer, h, ds[0], "paris", "i do not know")
    assert chatml_tokenizer.decode(ds[0]["chosen_input_ids"]).startswith("<|im_start|>system\nbe good")


def test_pairwise_hh_style_implicit_prompt(chatml_tokenizer, h):
    shared = chat(("u", "hello"), ("a", "hi"), ("u", "tell me about cats"))
    rec = {"chosen": shared + chat(("a", "cats are good")), "rejected": shared + chat(("a", "no"))}
    ds = PairwiseDataset.from_records([rec], chatml_tokenizer)
    _check_pair(chatml_tokenizer, h, ds[0], "cats are good", "no")
    # identical conversations: the final assistant turn still is the response (a file of only
    # such pairs is an error -- no preference signal -- so one real pair comes with it)
    same = {"chosen": rec["chosen"], "rejected": rec["chosen"]}
    _check_pair(
        chatml_tokenizer,
        h,
        PairwiseDataset.from_records([same, rec], chatml_tokenizer)[0],
        "cats are good",
        "cats are good",
    )
    # explicit prompt plus full conversations repeating it: same result
    full = {"prompt": shared, "chosen": rec["chosen"], "rejected": rec["rejected"]}
    assert PairwiseDataset.from_records([full], chatml_tokenizer)[0] == ds[0]


def test_pairwise_plain_mode(plain_tokenizer, h):
    ds = PairwiseDataset.from_records(
        [{"prompt": "sky is", "chosen": " blue", "rejected": " red"}], plain_tokenizer
    )
    ex = ds[0]
    assert plain_tokenizer.decode(ex["chosen_input_ids"]) == "sky is blue" + IM_END
    assert h.masked_text(plain_tokenizer, ex, "rejected_input_ids", "rejected_loss_mask") == " red" + IM_END


BAD_PAIRWISE = [
    ({"prompt": "q", "chosen": 1, "rejected": "b"}, "chosen", "got int"),
    ({"prompt": "q", "chosen": "a", "rejected": ""}, "rejected", "got an empty string"),
    ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "chosen", "got an empty string"),
    ({"prompt": "q", "rejected": "b"}, "chosen", "missing field"),
    ({"prompt": "q", "chosen": "a"}, "rejected", "missing field"),
    ({"chosen": "a", "rejected": "b"}, "prompt", "missing field"),
    ({"prompt": None, "chosen": "a", "rejected": "b"}, "prompt", "missing field"),
    ({"prompt": {"q": 1}, "chosen": "a", "rejected": "b"}, "prompt", "got object"),
    (
        {"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"},
        "chosen[0].content",
        "missing field",
    ),
    ({"prompt": "q", "chosen": chat(("u", "x")), "rejected": "b"}, "chosen", "no assistant turn"),
    (
        {"prompt": "q", "chosen": "a", "rejected": chat(("a", "x"), ("u", "y"))},
        "rejected[1].role",
        "last message",
    ),
    (
        {"chosen": chat(("u", "a"), ("a", "b")), "rejected": chat(("u", "c"), ("a", "d"))},
        "prompt",
        "share no prompt",
    ),
    (
        {"chosen": chat(("u", "a"), ("a", "b")), "rejected": chat(("u", "a"), ("a", "   "))},
        "rejected[1].content",
        "empty string",
    ),
]


@pytest.mark.parametrize("record,field,reason", BAD_PAIRWISE)
def test_pairwise_errors(tmp_path, chatml_tokenizer, h, record, field, reason):
    good = {"prompt": "hi", "chosen": "yes", "rejected": "no"}
    p = h.write_jsonl(tmp_path / "prefs.jsonl", [good, record])
    with pytest.raises(DataError) as ei:
        PairwiseDataset.from_file(p, chatml_tokenizer)
    h.assert_located(ei.value, p, 2, field)
    assert reason in str(ei.value)


def test_pointwise_labels(tmp_path, chatml_tokenizer, h):
    recs = [
        {"prompt": "q1", "completion": "good answer", "label": True},
        {"prompt": "q2", "response": "bad answer", "label": False},
        {"prompt": "q3", "response": "ok", "label": 0.25},
        {"prompt": "q4", "response": "ok", "label": 1},
        {"messages": chat(("u", "q5"), ("a", "fine")), "label": 0},
    ]
    ds = PointwiseDataset.from_file(h.write_jsonl(tmp_path / "kto.jsonl", recs), chatml_tokenizer)
    assert [ex["label"] for ex in ds] == [1.0, 0.0, 0.25, 1.0, 0.0]
    assert all(isinstance(ex["label"], float) for ex in ds)
    assert h.masked_text(chatml_tokenizer, ds[0]) == "good answer" + IM_END
    assert h.masked_text(chatml_tokenizer, ds[4]) == "fine" + IM_END
    assert set(ds[0]) == {"input_ids", "loss_mask", "label"}


def test_pointwise_trl_kto_conversational_parquet(tmp_path, chatml_tokenizer, h):
    recs = [{"prompt": chat(("u", "hello")), "completion": chat(("a", "hi there")), "label": True}]
    ds = PointwiseDataset.from_file(h.write_parquet(tmp_path / "kto.parquet", recs), chatml_tokenizer)
    assert ds[0]["label"] == 1.0
    assert h.masked_text(chatml_tokenizer, ds[0]) == "hi there" + IM_END


BAD_POINTWISE = [
    ({"prompt": "q", "response": "a"}, "label", "missing field"),
    ({"prompt": "q", "response": "a", "label": 1.5}, "label", "got 1.5"),
    ({"prompt": "q", "response": "a", "label": -0.1}, "label", "got -0.1"),
    ({"prompt": "q", "response": "a", "label": 2}, "label", "got 2"),
    ({"prompt": "q", "response": "a", "label": "true"}, "label", "got string"),
    ({"prompt": "q", "response": "a", "label": [1]}, "label", "got list"),
    ({"prompt": "q", "response": "", "label": 1}, "response", "empty string"),
    ({"prompt": "q", "label": 1}, "response", "missing field"),
]


@pytest.mark.parametrize("record,field,reason", BAD_POINTWISE)
def test_pointwise_errors(tmp_path, chatml_tokenizer, h, record, field, reason):
    p = h.write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "q", "response": "a", "label": 1}, record])
    with pytest.raises(DataError) as ei:
        PointwiseDataset.from_file(p, chatml_tokenizer)
    h.assert_located(ei.value, p, 2, field)
    assert reason in str(ei.value)


def test_pointwise_nan_label_rejected(chatml_tokenizer):
    with pytest.raises(DataError, match="field 'label'"):
        PointwiseDataset.from_records([{"prompt": "q", "response": "a", "label": math.nan}], chatml_tokenizer)


def test_pointwise_parquet_error_says_row(tmp_path, chatml_tokenizer, h):
    recs = [{"prompt": "q", "response": "a", "label": 1.0}, {"prompt": "q", "response": "a", "label": 3.0}]
    p = h.write_parquet(tmp_path / "kto.parquet", recs)
    with pytest.raises(DataError) as ei:
        PointwiseDataset.from_file(p, chatml_tokenizer)
    h.assert_located(ei.value, p, 2, "label", unit="row")
