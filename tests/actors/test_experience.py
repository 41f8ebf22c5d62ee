"""``Experience.concat``: the driver joins the rollout replicas' records into one
batch. Widths differ between replicas; every field must stay aligned."""

from __future__ import annotations

import pytest
import torch

from hbat.actors.experience import Experience

PAD = 3  # not 0, so a pad fill of 0 would show


def _part(widths: list[int], prompts: int, resp_from: int, version: int, temperature=1.0, scored=True) -> Experience:
    """Rows of ``width`` tokens (values 1..), responses from column ``resp_from``."""
    n, T = len(widths), max(widths)
    seq = torch.full((n, T), PAD)
    att = torch.zeros(n, T, dtype=torch.long)
    act = torch.zeros(n, T - 1, dtype=torch.long)
    for i, w in enumerate(widths):
        seq[i, :w] = torch.arange(1, w + 1) + 10 * version
        att[i, :w] = 1
        act[i, resp_from - 1:w - 1] = 1
    return Experience(
        sequences=seq, attention_mask=att, action_mask=act,
        prompt_index=torch.arange(n) // (n // prompts),
        prompt_text=[f"p{version}-{i}" for i in range(n)], response_text=[f"r{version}-{i}" for i in range(n)],
        meta=[{"v": version}] * n, weight_version=version, temperature=temperature,
        eos=torch.ones(n, dtype=torch.bool),
        logprobs=torch.randn(n, T - 1) * act if scored else None,
        scores=torch.arange(n, dtype=torch.float32) + version,
    )


def test_concat_pads_aligns_and_offsets_groups():
    a = _part([5, 4], prompts=1, resp_from=3, version=1)  # one prompt, 2 samples
    b = _part([8, 7, 6, 8], prompts=2, resp_from=3, version=2)  # two prompts, 2 samples each
    out = Experience.concat([a, b], PAD)
    assert len(out) == 6 and out.sequences.shape == (6, 8) and out.action_mask.shape == (6, 7)
    # the narrower part is padded on the right: tokens with pad, masks and per-token values with 0
    assert torch.equal(out.sequences[:2, :5], a.sequences) and (out.sequences[:2, 5:] == PAD).all()
    assert (out.attention_mask[:2, 5:] == 0).all() and (out.action_mask[:2, 4:] == 0).all()
    assert torch.equal(out.logprobs[:2, :4], a.logprobs) and (out.logprobs[:2, 4:] == 0).all()
    assert torch.equal(out.sequences[2:], b.sequences)
    # response lengths (what the losses average over) are unchanged
    assert torch.equal(out.response_lengths, torch.cat([a.response_lengths, b.response_lengths]))
    # prompt groups stay distinct: b's groups come after a's
    assert out.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert out.prompt_text == a.prompt_text + b.prompt_text and out.meta == a.meta + b.meta
    assert torch.equal(out.scores, torch.cat([a.scores, b.scores]))
    assert out.weight_version == 1  # the oldest weights any row was sampled with


def test_concat_missing_field_and_single_part():
    a = _part([4, 4], 1, 2, 1)
    b = _part([4, 4], 1, 2, 2, scored=False)
    assert Experience.concat([a, b], PAD).logprobs is None
    assert Experience.concat([a], PAD) is a


def test_concat_refuses_mixed_temperatures():
    with pytest.raises(ValueError, match="temperatures"):
        Experience.concat([_part([4, 4], 1, 2, 1, 1.0), _part([4, 4], 1, 2, 2, 0.7)], PAD)
