"""WeightPack: a state dict that crosses Ray's object store as numpy arrays and
reads back as the same tensors, bit for bit (bf16 included), never aliasing
the weights it was taken from."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from hbat.actors.weight_transport import WeightPack


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g).to(torch.bfloat16),
            "c": torch.arange(6, dtype=torch.int64).view(2, 3), "d": torch.randn(4, 2, generator=g).t()}


def test_round_trip_is_bitwise_and_crosses_pickle_as_numpy():
    state = _state()
    pack = pickle.loads(pickle.dumps(WeightPack(state)))
    assert set(pack) == set(state) and len(pack) == 4
    assert all(isinstance(a, np.ndarray) for a in pack._arrays.values())  # what Ray moves out of band
    for k, v in state.items():
        assert pack[k].dtype == v.dtype and pack[k].shape == v.shape
        assert torch.equal(pack[k], v), k


def test_pack_is_a_copy_not_a_view_of_the_weights():
    state = _state()
    pack = WeightPack(state)
    before = {k: v.clone() for k, v in state.items()}
    for v in state.values():
        v.add_(1)
    for k in state:
        assert torch.equal(pack[k], before[k]), k


def test_through_the_object_store(ray_local):
    import ray

    state = _state()
    got = ray.get(ray.put(WeightPack(state)))
    for k, v in state.items():
        assert torch.equal(got[k], v), k
