"""Preference losses by name, so a config says ``loss: ipo`` and no driver has an if-chain.

Two calling conventions (the ``kind`` of a :class:`LossSpec`):

* ``"pairwise"``: ``fn(pc, pr, rc, rr, **kwargs) -> (loss, stats)`` with summed
  policy/reference log-probs of chosen and rejected responses, ``[B]`` each;
* ``"pointwise"``: ``fn(policy_logps, ref_logps, labels, **kwargs) -> (loss, stats)``.

``spec(*tensors, **overrides)`` calls ``fn`` with ``spec.defaults`` updated by
``overrides`` (e.g. ``beta`` from the config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from .pointwise import pointwise_dpo_loss, ulma_loss
from .preference import dpo_loss, ipo_loss, slic_loss

__all__ = ["LossSpec", "PREFERENCE_LOSSES", "get_preference_loss"]


@dataclass(frozen=True)
class LossSpec:
    """A preference loss: the function, its calling convention, its default
    kwargs, and what its caller must compute for it.

    ``inputs``: extra tensors beyond the log-probs -- ``chosen_nll``
    (per-token NLL of the chosen responses, SLiC-HF's regulariser) and
    ``num_tokens`` (response lengths, ULMA). ``average_logps``: the loss is
    meant for per-token mean log-probs rather than sums (IPO, as in TRL).
    """

    fn: Callable[..., Any]
    kind: Literal["pairwise", "pointwise"]
    defaults: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    average_logps: bool = False

    def __call__(self, *tensors: Any, **overrides: Any) -> Any:
        return self.fn(*tensors, **{**self.defaults, **overrides})

    def option_names(self) -> list[str]:
        """Keyword options a config may set (the function's non-tensor parameters)."""
        import inspect

        params = list(inspect.signature(self.fn).parameters.values())
        n_tensors = 4 if self.kind == "pairwise" else 3
        return [p.name for p in params[n_tensors:] if p.name not in self.inputs]


PREFERENCE_LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo_loss, "pairwise", {"beta": 0.1, "label_smoothing": 0.0}),
    "cdpo": LossSpec(dpo_loss, "pairwise", {"beta": 0.1, "label_smoothing": 0.1}),
    "ipo": LossSpec(ipo_loss, "pairwise", {"beta": 0.1}, average_logps=True),
    "slic": LossSpec(slic_loss, "pairwise", {"beta": 1.0, "delta": 1.0, "reg_weight": 0.1}, inputs=("chosen_nll",)),
    "pointwise_dpo": LossSpec(pointwise_dpo_loss, "pointwise", {"beta": 0.1}),
    "ulma": LossSpec(ulma_loss, "pointwise", {"beta": 0.1}, inputs=("num_tokens",)),
}


def get_preference_loss(name: str) -> LossSpec:
    """Look up a preference loss by (case-insensitive) name.

    Raises ``ValueError`` naming every valid choice, so a typo in a config
    fails at start-up with the fix in the message.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    try:
        return PREFERENCE_LOSSES[key]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(PREFERENCE_LOSSES))
        raise ValueError(f"unknown preference loss {name!r}; valid names: {valid}") from None
