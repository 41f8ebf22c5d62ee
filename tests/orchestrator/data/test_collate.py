"""Sharding, shuffling, collation and the batches() iterator."""

from __future__ import annotations

import functools

import pytest
import torch

from hbat.orchestrator.data import (
    PairwiseDataset,
    PointwiseDataset,
    PromptDataset,
    SFTDataset,
    batches,
    collate_pairwise,
    collate_pointwise,
    collate_prompts,
    collate_sft,
    load_dataset,
)


@pytest.fixture(scope="module")
def sft(chatml_tokenizer):
    recs = [{"prompt": f"question {i}", "response": "yes " * (i % 4 + 1)} for i in range(10)]
    return SFTDataset.from_records(recs, chatml_tokenizer)


def test_shard_contiguous_near_equal(sft):
    shards = [sft.shard(3, i) for i in range(3)]
    assert [len(s) for s in shards] == [4, 3, 3]
    assert all(type(s) is SFTDataset for s in shards)
    flat = [ex for s in shards for ex in s]
    assert flat == list(sft)  # contiguous, in order, complete
    assert [sft.shard(3, 1)[i] for i in range(3)] == [shards[1][i] for i in range(3)]  # deterministic
    assert shards[1].origin(0) == "<memory>, record 5"
    assert [len(sft.shard(4, i)) for i in range(4)] == [3, 3, 2, 2]
    assert len(sft.shard(1, 0)) == 10
    for bad in ((0, 0), (3, 3), (3, -1), (11, 0)):
        with pytest.raises(ValueError):
            sft.shard(*bad)


def test_shuffled_deterministic(sft):
    a, b, c = sft.shuffled(1), sft.shuffled(1), sft.shuffled(2)
    assert list(a) == list(b) and list(a) != list(sft) and list(a) != list(c)
    assert sorted(map(str, a)) == sorted(map(str, sft))
    assert type(a) is SFTDataset and a.source == sft.source and a.pad_id == sft.pad_id


def test_collate_sft_right_pads(sft, chatml_tokenizer):
    pad = chatml_tokenizer.pad_token_id
    exs = [sft[0], sft[3]]
    b = collate_sft(exs, pad)
    lens = [len(e["input_ids"]) for e in exs]
    assert b["input_ids"].shape == (2, max(lens)) and b["input_ids"].dtype == torch.long
    for i, e in enumerate(exs):
        n = lens[i]
        assert b["input_ids"][i, :n].tolist() == e["input_ids"]
        assert b["input_ids"][i, n:].eq(pad).all()
        assert b["attention_mask"][i].tolist() == [1] * n + [0] * (max(lens) - n)
        assert b["loss_mask"][i].tolist() == e["loss_mask"] + [0] * (max(lens) - n)
    assert collate_sft(exs, pad, pad_to_multiple_of=8)["input_ids"].shape[1] % 8 == 0


def test_collate_pairwise_concatenates_chosen_then_rejected(chatml_tokenizer):
    recs = [
        {"prompt": "q one", "chosen": "a long chosen answer here", "rejected": "no"},
        {"prompt": "q two", "chosen": "yes", "rejected": "a long rejected answer"},
    ]
    ds = PairwiseDataset.from_records(recs, chatml_tokenizer)
    b = collate_pairwise(list(ds), 0)
    assert b["num_pairs"] == 2 and b["input_ids"].shape[0] == 4
    rows = [
        ds[0]["chosen_input_ids"],
        ds[1]["chosen_input_ids"],
        ds[0]["rejected_input_ids"],
        ds[1]["rejected_input_ids"],
    ]
    masks = [
        ds[0]["chosen_loss_mask"],
        ds[1]["chosen_loss_mask"],
        ds[0]["rejected_loss_mask"],
        ds[1]["rejected_loss_mask"],
    ]
    width = max(map(len, rows))
    assert b["input_ids"].shape[1] == width
    for i, (r, m) in enumerate(zip(rows, masks)):
        assert b["input_ids"][i].tolist() == r + [0] * (width - len(r))
        assert b["loss_mask"][i].tolist() == m + [0] * (width - len(m))
        assert b["attention_mask"][i].sum().item() == len(r)


def test_collate_pointwise_labels(chatml_tokenizer):
    ds = PointwiseDataset.from_records(
        [{"prompt": "a", "response": "b", "label": True}, {"prompt": "c", "response": "dd ee", "label": 0.5}],
        chatml_tokenizer,
    )
    b = collate_pointwise(list(ds), ds.pad_id)
    assert b["labels"].dtype == torch.float32 and b["labels"].tolist() == [1.0, 0.5]
    assert set(b) == {"input_ids", "attention_mask", "loss_mask", "labels"}


def test_collate_prompts_left_pads(chatml_tokenizer):
    ds = PromptDataset.from_records(
        [
            {"prompt": "hi", "reference": "1"},
            {"prompt": "a much longer question about cats", "reference": "2"},
        ],
        chatml_tokenizer,
    )
    pad = ds.pad_id
    b = collate_prompts(list(ds), pad)
    lens = [len(ds[0]["prompt_ids"]), len(ds[1]["prompt_ids"])]
    width = max(lens)
    assert b["input_ids"][0].tolist() == [pad] * (width - lens[0]) + ds[0]["prompt_ids"]
    assert b["attention_mask"][0].tolist() == [0] * (width - lens[0]) + [1] * lens[0]
    assert b["input_ids"][1].tolist() == ds[1]["prompt_ids"]
    assert b["prompt_lengths"].tolist() == lens
    assert b["prompt_text"] == [ds[0]["prompt_text"], ds[1]["prompt_text"]]
    assert b["meta"] == [{"reference": "1"}, {"reference": "2"}]


def test_batches_iterator(sft):
    got = list(batches(sft, 4))
    assert [b["input_ids"].shape[0] for b in got] == [4, 4, 2]
    assert [b["input_ids"].shape[0] for b in batches(sft, 4, drop_last=True)] == [4, 4]
    s1 = [b["input_ids"].tolist() for b in batches(sft, 3, collate_sft, shuffle=True, seed=5)]
    s2 = [b["input_ids"].tolist() for b in batches(sft, 3, collate_sft, shuffle=True, seed=5)]
    assert s1 == s2
    first = [b["input_ids"][0].tolist() for b in batches(sft, 1)]
    assert len(first) == 10
    with pytest.raises(ValueError):
        next(batches(sft, 0))


def test_works_with_torch_dataloader(sft):
    loader = torch.utils.data.DataLoader(
        sft, batch_size=4, collate_fn=functools.partial(collate_sft, pad_id=sft.pad_id)
    )
    assert sum(b["input_ids"].shape[0] for b in loader) == 10


def test_load_dataset_by_kind(tmp_path, chatml_tokenizer, h):
    p = h.write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}])
    assert isinstance(load_dataset("sft", p, chatml_tokenizer, max_len=64, max_prompt_len=32), SFTDataset)
    with pytest.raises(ValueError, match="unknown dataset kind"):
        load_dataset("dpo", p, chatml_tokenizer)
