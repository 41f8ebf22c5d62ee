"""Elastic weight consolidation for HBAT's alternating phases (arXiv 2406.15178).

HBAT alternates an instruction (SFT) phase and a preference (PPO/DPO) phase.
While training one objective, a penalty keeps each parameter tensor ``n``
near ``theta*_n`` -- the weights at the end of the *other* objective's last
phase -- in proportion to how much that tensor mattered to the other objective:

    Omega(theta) = lambda * sum_n w_n * sum((theta_n - theta*_n)^2)

Importance ``w_n`` comes either from the paper's *modified EWC* -- how far the
other phase moved the tensor, ``mean((theta_n(end) - theta_n(start))^2)``,
free to compute -- or from the original EWC diagonal Fisher (Kirkpatrick et
al. 2017), squared gradients of the other objective, which costs extra
backward passes. Importances are per tensor (one scalar per named parameter),
normalised across tensors and capped at ``max_weight`` (the paper's
``ewc_max_weight``).

Two variants of the modified-EWC importance exist. The paper's text
(Section 3.3) describes the per-phase movement, normalised across tensors
and capped at ``ewc_max_weight`` -- ``method: modified`` here. The authors'
released code (a DeepSpeed-Chat fork) differs: the importance *accumulates*
over rounds (each phase adds its movement to the importance recorded for the
same objective before), the squared movement is multiplied by a large factor
before a softmax over tensors, and the softmax is multiplied by
``ewc_max_weight`` (100 by default there) -- ``method: modified_code``, the
``scaled_softmax`` normalisation with :data:`AUTHORS_CODE_SCALE`.

Everything is keyed by parameter name, so the same code anchors a full model
or only its LoRA adapters: snapshot whatever :func:`trainable_state` returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "trainable_state",
    "movement_importance",
    "mean_of_sums",
    "fisher_importance",
    "normalize_importance",
    "EWCAnchor",
    "NORMALIZE_MODES",
    "AUTHORS_CODE_SCALE",
]

NORMALIZE_MODES = ("max", "softmax", "rank", "none", "scaled_softmax")

#: factor on the raw (mean squared movement) importances before the
#: ``scaled_softmax``: the authors' code multiplies ``mean((theta - theta')^2)``
#: by its ``--ewc_mse_factor`` option, default ``1e10``
#: (``step1_supervised_finetuning/options.py`` of their DeepSpeed-Chat fork),
#: before accumulating it and taking the softmax over tensors. Squared weight
#: deltas are ~1e-10..1e-6, so without such a factor the softmax is uniform;
#: with it, the most-moved tensors take almost all of ``max_weight``.
AUTHORS_CODE_SCALE = 1e10


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """Detached CPU clones (dtype kept) of every ``requires_grad`` parameter, by name.

    Why: the start/end snapshots of a phase for :func:`movement_importance` and
    the anchor ``theta*`` of :class:`EWCAnchor`. Frozen parameters (e.g. the
    base weights under LoRA) are skipped -- they cannot move, so they need no
    anchor. Clones live on CPU so snapshots do not cost accelerator memory.
    """
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def movement_importance(
    start: Mapping[str, Tensor], end: Mapping[str, Tensor], all_sum: Callable[[Tensor], Tensor] | None = None
) -> dict[str, float]:
    """HBAT's modified-EWC importance: how far a phase moved each tensor.

    Formula: ``imp_n = mean((end_n - start_n)^2)`` over the elements of tensor
    ``n``, for every name in ``start`` (a name missing from ``end`` is a
    ``KeyError``; extra names in ``end`` are ignored).

    ``all_sum`` (sharded training): the tensors are this rank's shards; the
    per-tensor sums of squares and element counts are summed over the ranks
    with it before the mean, so every rank gets the importance of the whole
    tensor -- the same numbers one process holding the whole model computes.

    Paper: HBAT, Wang et al. 2024 (arXiv 2406.15178), modified EWC.

    Why: a gradient Fisher needs extra passes over the other objective's data
    -- too costly for LLMs -- whereas the phase's own movement is free and
    marks the tensors that phase relied on. Mean (not sum) makes tensors of
    different sizes comparable.
    """
    sums: dict[str, tuple[Tensor, int]] = {}
    for name, s in start.items():
        if name not in end:
            raise KeyError(f"parameter {name!r} is in the start snapshot but not in the end snapshot")
        e = end[name]
        if e.shape != s.shape:
            raise ValueError(f"parameter {name!r} changed shape: {tuple(s.shape)} -> {tuple(e.shape)}")
        d = e.detach().double() - s.detach().to(e.device).double()
        sums[name] = (d.pow(2).sum(), d.numel())
    return mean_of_sums(sums, all_sum)


def mean_of_sums(
    sums: Mapping[str, tuple[Tensor | float, int]], all_sum: Callable[[Tensor], Tensor] | None = None
) -> dict[str, float]:
    """Per-tensor ``sum / count`` from ``{name: (sum, count)}``; with ``all_sum``
    both are first summed over the ranks of a sharded model (one collective for
    all tensors), so a mean over a sharded tensor equals the unsharded one."""
    names = list(sums)
    if not names:
        return {}
    vec = torch.tensor([float(sums[n][0]) for n in names] + [float(sums[n][1]) for n in names], dtype=torch.float64)
    if all_sum is not None:
        vec = all_sum(vec)
    k = len(names)
    return {n: float(vec[i] / vec[k + i]) if vec[k + i] > 0 else 0.0 for i, n in enumerate(names)}


def fisher_importance(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    param_names: list[str] | None = None,
) -> dict[str, float]:
    """Original EWC importance: per-tensor mean of the squared gradient (diagonal Fisher).

    Formula: ``F_n = (1/K) sum_{k=1..K} mean_elements( (d loss_fn(model, batch_k) / d theta_n)^2 )``
    over the ``K`` batches, for every ``requires_grad`` parameter (or only
    ``param_names``); a parameter the loss does not reach gets 0.

    Paper: Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in
    neural networks" (EWC). As usual for large models this is the *empirical*
    Fisher of mini-batch gradients (squared gradient of the batch-mean loss),
    not per-example squared gradients -- pass batches of size 1 for the latter.

    Why: the HBAT paper's baseline for its movement importance; offered as an
    option for the ablation. Gradients come from
    ``torch.autograd.grad`` so ``.grad`` fields, optimiser state and the
    model's train/eval mode are left untouched.
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if param_names is not None:
        missing = [n for n in param_names if n not in named]
        if missing:
            raise KeyError(f"not trainable parameters of the model: {missing}")
        named = {n: named[n] for n in param_names}
    names, params = list(named), list(named.values())
    sums = [0.0] * len(params)
    count = 0
    with torch.enable_grad():
        for batch in batches:
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for i, g in enumerate(grads):
                if g is not None and g.numel():
                    sums[i] += float(g.detach().double().pow(2).mean())
            count += 1
    if count == 0:
        raise ValueError("fisher_importance needs at least one batch")
    return {n: s / count for n, s in zip(names, sums)}


def normalize_importance(
    imp: Mapping[str, float], mode: str = "max", max_weight: float = 1.0, scale: float = 1.0
) -> dict[str, float]:
    """Turn raw per-tensor importances into EWC weights in ``[0, max_weight]``.

    With ``N`` tensors and ``m = max_n imp_n``:

    * ``"max"`` (HBAT default): ``w_n = imp_n / m * max_weight`` -- the most
      important tensor gets ``max_weight``, the rest proportionally less.
    * ``"softmax"``: ``w_n = min(N * softmax_n(imp / m), max_weight)``. The
      temperature is ``m``: raw importances are tiny (``~1e-10`` for squared
      weight deltas), so a softmax of them would be uniform; dividing by the
      max makes the result scale-free, logits in ``[0, 1]``. The ``N *`` makes
      the average weight 1 before the cap, so weights are in
      ``[N e^0 / sum, N e^1 / sum]`` -- a gentle, bounded preference for the
      most-moved tensors that never silences any tensor.
    * ``"rank"``: ``w_n = rank_n / N * max_weight`` with ranks ``1..N`` in
      ascending importance (ties share their average rank) -- robust to a
      single outlier tensor dominating ``"max"``.
    * ``"none"``: ``w_n = min(imp_n, max_weight)`` (raw importances, capped).
    * ``"scaled_softmax"`` (the authors' code): ``w_n = max_weight *
      softmax_n(scale * imp_n)`` -- weights sum to ``max_weight``; no cap
      beyond that. All-zero importances give the uniform ``max_weight / N``
      there too, as that code does.

    Every mode caps at ``max_weight`` (the paper's ``ewc_max_weight``). If all
    importances are 0 (nothing moved) every weight is 0 -- no anchor strength
    where there is no evidence, and no ``0/0``. Negative or non-finite
    importances raise ``ValueError``.
    """
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"unknown importance normalisation {mode!r}; valid: {', '.join(NORMALIZE_MODES)}")
    names = list(imp)
    vals = [float(imp[n]) for n in names]
    bad = [n for n, v in zip(names, vals) if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"importances must be finite and >= 0; bad for {bad}")
    if not names:
        return {}
    if mode == "scaled_softmax":
        logits = torch.tensor(vals, dtype=torch.float64) * float(scale)
        return {n: float(x) * max_weight for n, x in zip(names, torch.softmax(logits, dim=0).tolist())}
    m = max(vals)
    if m == 0.0:
        return {n: 0.0 for n in names}
    N = len(vals)
    if mode == "max":
        w = [v / m * max_weight for v in vals]
    elif mode == "softmax":
        logits = torch.tensor(vals, dtype=torch.float64) / m
        w = (torch.softmax(logits, dim=0) * N).tolist()
    elif mode == "rank":
        order = sorted(range(N), key=lambda i: vals[i])
        ranks = [0.0] * N
        i = 0
        while i < N:  # average ranks over runs of ties
            j = i
            while j + 1 < N and vals[order[j + 1]] == vals[order[i]]:
                j += 1
            for k in range(i, j + 1):
                ranks[order[k]] = (i + j) / 2.0 + 1.0
            i = j + 1
        w = [r / N * max_weight for r in ranks]
    else:  # "none"
        w = list(vals)
    return {n: min(x, max_weight) for n, x in zip(names, w)}


class EWCAnchor:
    """Anchor weights ``theta*``, per-tensor weights ``w`` and strength ``lambda``.

    ``penalty(params) = strength * sum_n w_n * sum((theta_n - theta*_n)^2)``
    over the names present in the anchor. Build one at the end of a phase
    (:meth:`from_movement` or :meth:`from_fisher`) and add ``penalty(model)``
    to the next phase's loss.

    The anchor tensors are detached clones; they stay where they were given
    (``trainable_state`` gives CPU) unless ``device`` is passed, and are moved
    to a parameter's device the first time the penalty meets it (then kept
    there, so each step does not copy them again). Tensors with weight 0 are
    skipped entirely.
    """

    def __init__(
        self,
        anchor: Mapping[str, Tensor],
        weights: Mapping[str, float],
        strength: float,
        device: str | torch.device | None = None,
    ) -> None:
        if set(anchor) != set(weights):
            raise ValueError(
                "anchor and weights must name the same tensors; "
                f"only in anchor: {sorted(set(anchor) - set(weights))}, "
                f"only in weights: {sorted(set(weights) - set(anchor))}"
            )
        self.anchor: dict[str, Tensor] = {
            n: t.detach().clone() if device is None else t.detach().to(device, copy=True) for n, t in anchor.items()
        }
        self.weights: dict[str, float] = {n: float(weights[n]) for n in anchor}
        self.strength = float(strength)
        self.importance: dict[str, float] = {}  # raw importance the weights came from (accumulates in modified_code)

    # -- construction -------------------------------------------------------
    @classmethod
    def from_movement(
        cls,
        start_state: Mapping[str, Tensor],
        end_state: Mapping[str, Tensor],
        strength: float,
        mode: str = "max",
        max_weight: float = 1.0,
        previous: "EWCAnchor | Mapping[str, float] | None" = None,
        scale: float = 1.0,
        all_sum: Callable[[Tensor], Tensor] | None = None,
    ) -> EWCAnchor:
        """HBAT modified EWC: anchor at ``end_state``, weights from the start->end movement.

        ``previous`` (an anchor or raw importances by name): its raw importance
        is added to this phase's movement first -- the authors' code's
        accumulation over rounds; names it lacks count 0. ``all_sum``: the
        states are this rank's shards (see :func:`movement_importance`); the
        anchor then holds the shards, and the weights are the global ones.
        """
        imp = movement_importance(start_state, end_state, all_sum)
        if previous is not None:
            prev = previous.importance if isinstance(previous, EWCAnchor) else previous
            imp = {n: v + float(prev.get(n, 0.0)) for n, v in imp.items()}
        weights = normalize_importance(imp, mode=mode, max_weight=max_weight, scale=scale)
        anchor = cls({n: end_state[n] for n in imp}, weights, strength)
        anchor.importance = dict(imp)
        return anchor

    @classmethod
    def from_fisher(
        cls,
        anchor_state: Mapping[str, Tensor],
        fisher_imp: Mapping[str, float],
        strength: float,
        mode: str = "max",
        max_weight: float = 1.0,
    ) -> EWCAnchor:
        """Original EWC: anchor at ``anchor_state``, weights from :func:`fisher_importance`.

        Only names present in both are anchored.
        """
        names = [n for n in anchor_state if n in fisher_imp]
        weights = normalize_importance({n: fisher_imp[n] for n in names}, mode=mode, max_weight=max_weight)
        anchor = cls({n: anchor_state[n] for n in names}, weights, strength)
        anchor.importance = {n: float(fisher_imp[n]) for n in names}
        return anchor

    # -- use ----------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Names of the anchored tensors."""
        return list(self.anchor)

    def penalty(
        self, named_params: nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], strict: bool = False
    ) -> Tensor:
        """``strength * sum_n w_n * sum((theta_n - theta*_n)^2)``, a differentiable scalar.

        ``named_params`` is a module (its ``named_parameters()``), a mapping or an
        iterable of ``(name, tensor)``. Names not in the anchor are ignored;
        anchor names missing from ``named_params`` are skipped, or raise
        ``KeyError`` listing them if ``strict``. Computed in float32 (or the
        parameter dtype if wider) so bf16 weights do not lose the small
        differences the penalty is about.
        """
        if isinstance(named_params, nn.Module):
            items = named_params.named_parameters()
        elif isinstance(named_params, Mapping):
            items = named_params.items()
        else:
            items = named_params
        params = {n: p for n, p in items if n in self.anchor}
        if strict:
            missing = [n for n in self.anchor if n not in params]
            if missing:
                raise KeyError(f"anchored parameters not found in the model: {missing}")
        total: Tensor | None = None
        for name, p in params.items():
            w = self.weights[name]
            if w == 0.0 or self.strength == 0.0:
                continue
            a = self.anchor[name]
            if a.device != p.device:
                a = self.anchor[name] = a.to(p.device)
            dtype = torch.promote_types(p.dtype, torch.float32)
            term = w * (p.to(dtype) - a.to(dtype)).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            ref = next(iter(params.values()), None)
            if ref is not None:  # keep the graph connected: zero gradients, not None
                return (ref * 0).sum().float()
            return torch.zeros(())
        return self.strength * total

    @torch.no_grad()
    def add_gradient(self, params: Mapping[str, tuple[Tensor, Tensor]], keep_on_device: bool = True) -> float:
        """Add the penalty's gradient to the parameters' gradients in place and return its value.

        ``params``: ``{name: (weights, grad)}`` -- plain tensors, e.g. a sharded
        parameter's local shard and its gradient's local shard (the penalty
        is a sum over elements, so each rank's part of it and of its gradient
        are local; the caller sums the values over ranks). ``d/dtheta`` of
        ``strength * w * sum((theta - theta*)^2)`` is ``2 * strength * w *
        (theta - theta*)``: added tensor by tensor with no autograd graph, so
        no difference tensor outlives its own tensor's turn (the autograd
        penalty keeps one per parameter for backward). ``keep_on_device``
        False: anchor tensors stay where they are (host memory) and are
        copied to the parameter's device only for their turn.
        """
        if self.strength == 0.0:
            return 0.0
        total = None
        for name, (theta, grad) in params.items():
            w = self.weights.get(name, 0.0)
            if w == 0.0 or name not in self.anchor:
                continue
            a = self.anchor[name]
            if a.device != theta.device:
                moved = a.to(theta.device, non_blocking=True)
                if keep_on_device:
                    self.anchor[name] = moved
                a = moved
            d = self._workspace(theta, params)
            torch.sub(theta, a, out=d)  # (promotes a bf16 theta to the fp32 workspace)
            flat = d.view(-1)
            sq = torch.dot(flat, flat) * w
            total = sq if total is None else total + sq
            grad.add_(d if d.dtype == grad.dtype else d.to(grad.dtype), alpha=2.0 * self.strength * w)
        return self.strength * float(total) if total is not None else 0.0

    def _workspace(self, theta: Tensor, params: Mapping[str, tuple[Tensor, Tensor]]) -> Tensor:
        """A reused buffer shaped like ``theta`` for ``theta - theta*``.

        One buffer, as large as the largest tensor, lives as long as the
        anchor: a fresh difference tensor per parameter per step costs an
        allocation and its page faults (measured as most of the penalty's
        time on CPU), while the arithmetic itself is three passes over
        memory. On an accelerator the caching allocator already reuses
        memory, so no buffer is kept there (it would hold a copy of the
        largest tensor, e.g. a 7B model's embedding, for the whole phase).
        """
        dtype = torch.promote_types(theta.dtype, torch.float32)
        if theta.device.type != "cpu":
            return torch.empty(theta.shape, dtype=dtype, device=theta.device)
        work = getattr(self, "_work", None)
        if work is None or work.dtype != dtype or work.device != theta.device or work.numel() < theta.numel():
            size = max(t.numel() for t, _ in params.values())
            work = self._work = torch.empty(size, dtype=dtype, device=theta.device)
        return work[: theta.numel()].view(theta.shape)

    def to(self, device: str | torch.device) -> EWCAnchor:
        """Move the anchor tensors to ``device`` (in place) and return self."""
        self.anchor = {n: t.to(device) for n, t in self.anchor.items()}
        return self

    # -- checkpoints ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"anchor": {name: CPU tensor}, "weights": {name: float}, "strength": float}``."""
        return {
            "anchor": {n: t.detach().to("cpu", copy=True) for n, t in self.anchor.items()},
            "weights": dict(self.weights),
            "strength": self.strength,
            "importance": dict(self.importance),
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> EWCAnchor:
        """Inverse of :meth:`state_dict`."""
        anchor = cls(d["anchor"], d["weights"], d["strength"])
        anchor.importance = dict(d.get("importance", {}))
        return anchor

    def __repr__(self) -> str:
        return f"EWCAnchor(tensors={len(self.anchor)}, strength={self.strength})"
