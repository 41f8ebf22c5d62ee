"""HBAT modified EWC, original (Fisher) EWC and the EWCAnchor penalty."""

import io
import math

import pytest
import torch
from torch import nn

from hbat.objectives.ewc import (
    EWCAnchor,
    fisher_importance,
    movement_importance,
    normalize_importance,
    trainable_state,
)


class Tiny(nn.Module):
    """A frozen 'base' layer plus LoRA-style trainable adapters, like a PEFT model."""

    def __init__(self, lora=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.base = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2, bias=False)
        self.unused = nn.Parameter(torch.ones(2))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        if lora:
            self.base.requires_grad_(False)
            self.lora_A = nn.Parameter(torch.randn(2, 4, generator=g) * 0.1)
            self.lora_B = nn.Parameter(torch.randn(3, 2, generator=g) * 0.1)

    def forward(self, x):
        h = self.base(x)
        if hasattr(self, "lora_A"):
            h = h + x @ self.lora_A.T @ self.lora_B.T
        return self.head(torch.tanh(h))


# ---------------------------------------------------------------- snapshots / importance
def test_trainable_state_is_detached_cpu_clone_and_skips_frozen():
    m = Tiny(lora=True)
    s = trainable_state(m)
    assert set(s) == {"head.weight", "unused", "lora_A", "lora_B"}
    assert all(t.device.type == "cpu" and not t.requires_grad for t in s.values())
    with torch.no_grad():
        m.head.weight.add_(1.0)
    assert not torch.equal(s["head.weight"], m.head.weight.detach())


def test_movement_importance_matches_loop():
    g = torch.Generator().manual_seed(1)
    start = {"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g), "c": torch.zeros(2)}
    end = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in start.items()}
    end["c"] = start["c"].clone()
    end["extra"] = torch.zeros(1)
    imp = movement_importance(start, end)
    assert set(imp) == {"a", "b", "c"}
    for k in start:
        d = [(e - s) ** 2 for e, s in zip(end[k].flatten().tolist(), start[k].flatten().tolist())]
        assert imp[k] == pytest.approx(sum(d) / len(d))
    assert imp["c"] == 0.0
    with pytest.raises(KeyError, match="'b'"):
        movement_importance(start, {"a": end["a"], "c": end["c"]})


def test_fisher_importance_matches_manual_gradients_and_leaves_grad_alone():
    m = Tiny()
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g)) for _ in range(3)]
    loss_fn = lambda model, b: ((model(b[0]) - b[1]) ** 2).mean()
    m.head.weight.grad = torch.full_like(m.head.weight, 7.0)
    fisher = fisher_importance(m, batches, loss_fn)
    assert torch.equal(m.head.weight.grad, torch.full_like(m.head.weight, 7.0))
    assert fisher["unused"] == 0.0  # not reached by the loss
    for name, p in m.named_parameters():
        if name == "unused":
            continue
        acc = 0.0
        for b in batches:
            (gr,) = torch.autograd.grad(loss_fn(m, b), [p])
            acc += sum(x * x for x in gr.flatten().tolist()) / gr.numel()
        assert fisher[name] == pytest.approx(acc / 3, rel=1e-6)
    sub = fisher_importance(m, batches, loss_fn, param_names=["head.weight"])
    assert set(sub) == {"head.weight"} and sub["head.weight"] == pytest.approx(fisher["head.weight"])
    with pytest.raises(KeyError):
        fisher_importance(m, batches, loss_fn, param_names=["nope"])
    with pytest.raises(ValueError):
        fisher_importance(m, [], loss_fn)


# ---------------------------------------------------------------- normalisation
IMP = {"a": 4e-10, "b": 1e-10, "c": 2e-10, "d": 1e-10}


def test_normalize_max_and_none():
    w = normalize_importance(IMP, "max", max_weight=2.0)
    assert w == pytest.approx({"a": 2.0, "b": 0.5, "c": 1.0, "d": 0.5})
    assert normalize_importance(IMP, "none", max_weight=2.0) == pytest.approx(IMP)
    assert normalize_importance({"a": 5.0, "b": 0.5}, "none", max_weight=1.0) == {"a": 1.0, "b": 0.5}


def test_normalize_softmax_temperature_is_the_max():
    w = normalize_importance(IMP, "softmax", max_weight=10.0)  # cap not active
    m = max(IMP.values())
    ex = {k: math.exp(v / m) for k, v in IMP.items()}
    z = sum(ex.values())
    assert w == pytest.approx({k: 4 * e / z for k, e in ex.items()})
    assert sum(w.values()) == pytest.approx(4.0)
    scaled = normalize_importance({k: v * 1e6 for k, v in IMP.items()}, "softmax", max_weight=10.0)
    assert scaled == pytest.approx(w)  # scale-free
    capped = normalize_importance(IMP, "softmax", max_weight=1.0)
    assert capped["a"] == 1.0 and all(v <= 1.0 for v in capped.values())
    assert capped["b"] == pytest.approx(w["b"])


def test_normalize_rank_with_ties():
    w = normalize_importance(IMP, "rank", max_weight=1.0)
    # ascending: b,d tied at ranks 1,2 -> 1.5 ; c -> 3 ; a -> 4
    assert w == pytest.approx({"a": 1.0, "b": 1.5 / 4, "c": 3 / 4, "d": 1.5 / 4})


@pytest.mark.parametrize("mode", ["max", "softmax", "rank", "none"])
def test_normalize_all_zero_and_cap(mode):
    z = normalize_importance({"a": 0.0, "b": 0.0}, mode)
    assert z == {"a": 0.0, "b": 0.0}
    w = normalize_importance({"a": 3.0, "b": 1.0, "c": 0.5}, mode, max_weight=0.7)
    assert all(0.0 <= v <= 0.7 for v in w.values())
    assert normalize_importance({}, mode) == {}


def test_normalize_errors():
    with pytest.raises(ValueError, match="max, softmax, rank, none"):
        normalize_importance(IMP, "l2")
    with pytest.raises(ValueError):
        normalize_importance({"a": -1.0}, "max")
    with pytest.raises(ValueError):
        normalize_importance({"a": float("nan")}, "max")


# ---------------------------------------------------------------- penalty
def _shifted(model, direction, t):
    out = {}
    for n, p in model.named_parameters():
        out[n] = (p.detach() + t * direction[n]).requires_grad_(True)
    return out


def test_penalty_zero_at_anchor_quadratic_and_weighted():
    m = Tiny()
    anchor = trainable_state(m)
    weights = {"base.weight": 0.5, "base.bias": 1.0, "head.weight": 0.25, "unused": 0.0}
    ewc = EWCAnchor(anchor, weights, strength=3.0)
    assert ewc.penalty(m).item() == 0.0
    g = torch.Generator().manual_seed(3)
    direction = {n: torch.randn(p.shape, generator=g) for n, p in m.named_parameters()}
    p1 = ewc.penalty(_shifted(m, direction, 1.0)).item()
    p2 = ewc.penalty(_shifted(m, direction, 2.0)).item()
    p_half = ewc.penalty(_shifted(m, direction, 0.5)).item()
    assert p1 > 0
    assert p2 == pytest.approx(4 * p1, rel=1e-5) and p_half == pytest.approx(p1 / 4, rel=1e-5)
    expect = 3.0 * sum(weights[n] * float((direction[n] ** 2).sum()) for n in weights)
    assert p1 == pytest.approx(expect, rel=1e-5)
    assert EWCAnchor(anchor, weights, strength=6.0).penalty(_shifted(m, direction, 1.0)).item() == pytest.approx(2 * p1, rel=1e-6)


def test_penalty_gradient_and_gradcheck():
    m = Tiny().double()
    anchor = trainable_state(m)
    weights = {"base.weight": 0.5, "base.bias": 1.0, "head.weight": 0.25, "unused": 0.8}
    ewc = EWCAnchor(anchor, weights, strength=2.0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3)
    ewc.penalty(m).backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, 2 * 2.0 * weights[n] * (p.detach() - anchor[n]))
    x = anchor["base.weight"].clone().add_(0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ewc.penalty([("base.weight", t)]), (x,))


def test_penalty_on_lora_subset_and_strict():
    m = Tiny(lora=True)
    start = trainable_state(m)
    with torch.no_grad():
        m.lora_A.add_(0.2)
        m.lora_B.add_(0.05)
        m.head.weight.add_(0.01)
    end = trainable_state(m)
    lora_only = {n: t for n, t in end.items() if n.startswith("lora_")}
    lora_start = {n: start[n] for n in lora_only}
    ewc = EWCAnchor.from_movement(lora_start, lora_only, strength=1.0)
    assert ewc.names == ["lora_A", "lora_B"]
    assert ewc.weights["lora_A"] == 1.0 and 0 < ewc.weights["lora_B"] < 1.0
    assert ewc.penalty(m).item() == 0.0  # anchored at the end of the phase
    with torch.no_grad():
        m.lora_A.add_(0.1)
        m.head.weight.add_(5.0)  # not anchored: ignored
    pen = ewc.penalty(m)
    assert pen.item() == pytest.approx(0.01 * m.lora_A.numel(), rel=1e-4)
    pen.backward()
    assert m.head.weight.grad is None and m.base.weight.grad is None
    # only the adapters passed in (e.g. a PEFT get_peft_model_state_dict-style iterable)
    assert ewc.penalty([("lora_A", m.lora_A)]).item() == pytest.approx(pen.item(), rel=1e-6)
    with pytest.raises(KeyError, match="lora_B"):
        ewc.penalty([("lora_A", m.lora_A)], strict=True)
    empty = ewc.penalty([("other", torch.ones(2))])
    assert empty.item() == 0.0


def test_from_movement_and_from_fisher():
    g = torch.Generator().manual_seed(4)
    start = {"a": torch.randn(3, generator=g), "b": torch.randn(3, generator=g)}
    end = {"a": start["a"] + 1.0, "b": start["b"] + 0.5}
    ewc = EWCAnchor.from_movement(start, end, strength=0.5, mode="max", max_weight=0.8)
    assert ewc.weights == pytest.approx({"a": 0.8, "b": 0.2})
    assert torch.equal(ewc.anchor["a"], end["a"]) and ewc.strength == 0.5
    end["a"].add_(100.0)  # the anchor is a clone
    assert not torch.equal(ewc.anchor["a"], end["a"])
    f = EWCAnchor.from_fisher(start, {"a": 2.0, "b": 8.0, "zzz": 1.0}, strength=1.0, mode="max")
    assert f.names == ["a", "b"] and f.weights == pytest.approx({"a": 0.25, "b": 1.0})
    with pytest.raises(ValueError, match="same tensors"):
        EWCAnchor(start, {"a": 1.0}, 1.0)


def test_state_dict_round_trip():
    m = Tiny()
    ewc = EWCAnchor(trainable_state(m), {n: 0.1 * i for i, n in enumerate(trainable_state(m))}, strength=4.0)
    buf = io.BytesIO()
    torch.save(ewc.state_dict(), buf)
    buf.seek(0)
    back = EWCAnchor.from_state_dict(torch.load(buf))
    assert back.names == ewc.names and back.weights == ewc.weights and back.strength == 4.0
    for n in ewc.names:
        assert torch.equal(back.anchor[n], ewc.anchor[n])
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.1)
    assert back.penalty(m).item() == pytest.approx(ewc.penalty(m).item())


def test_penalty_bf16_params_computed_in_fp32():
    anchor = {"w": torch.zeros(1000)}
    ewc = EWCAnchor(anchor, {"w": 1.0}, strength=1.0)
    p = torch.full((1000,), 1e-2, dtype=torch.bfloat16, requires_grad=True)
    pen = ewc.penalty({"w": p})
    assert pen.dtype == torch.float32
    assert pen.item() == pytest.approx(1000 * float(p.detach()[0].float()) ** 2, rel=1e-5)


@pytest.mark.parametrize("keep_on_device", [True, False])
def test_add_gradient_equals_autograd_of_the_penalty(keep_on_device):
    """The graph-free penalty gradient (what the policy applies) is d penalty / d theta,
    and its value is the penalty's; bf16 weights get the fp32-computed difference."""
    torch.manual_seed(0)
    anchor_state = {"a": torch.randn(5, 3), "b": torch.randn(7), "c": torch.randn(2, 2)}
    weights = {"a": 0.7, "b": 0.0, "c": 2.5}
    anchor = EWCAnchor(anchor_state, weights, strength=3.0)
    params = {k: (v + 0.1 * torch.randn_like(v)).requires_grad_(True) for k, v in anchor_state.items()}
    pen = anchor.penalty(params)
    pen.backward()
    grads = {k: torch.full_like(v, 0.25) for k, v in params.items()}  # existing loss gradients stay
    value = anchor.add_gradient({k: (p.detach(), grads[k]) for k, p in params.items()}, keep_on_device=keep_on_device)
    assert value == pytest.approx(float(pen), rel=1e-6)
    for k, p in params.items():
        want = (p.grad if p.grad is not None else torch.zeros_like(p)) + 0.25
        torch.testing.assert_close(grads[k], want, rtol=1e-6, atol=1e-7)
    assert torch.equal(grads["b"], torch.full_like(grads["b"], 0.25))  # weight 0: untouched
