"""Weaker models derived from a strong one, for model-level contrasts on a laptop.

PopAlign's model-level strategies need two models of one family with
different strength (a 34B vs a 6B model; a leaderboard leader vs a laggard).
Without a hub there is one embedded model, so the weaker ones are made from
it, once, into ``output_dir/models/<name>`` (plain Hugging Face folders):

* ``keep_layers: k`` keeps the first k decoder layers (embeddings, final norm
  and head unchanged): a genuinely *smaller* model of the same family, the
  same tokenizer and chat template -- the parameter-count contrast's
  "smaller" side. Early exit from a transformer keeps its vocabulary and
  format but loses depth, so its answers are worse in a graded way.
* ``noise: s`` adds Gaussian noise of ``s`` times each weight tensor's own
  standard deviation (seeded): the *same size*, less capable -- a stand-in
  for a lower leaderboard entry, with the strength set by ``s``.

Both may be combined. The folder is written atomically; an existing one is
reused (a resumed build does not rebuild it), and ``hbat.json`` in it records
the derivation so a changed spec is noticed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from hbat.models import load_causal_lm, load_tokenizer, save_checkpoint

log = logging.getLogger("hbat.pairs")


def derive_model(spec: dict, out: str | Path) -> str:
    """Build (or reuse) the derived model described by ``spec`` (a ``DeriveSpec`` dump) in ``out``."""
    out = Path(out)
    marker = out / "hbat.json"
    if marker.exists():
        if json.loads(marker.read_text()).get("derive") == spec:
            return str(out)
        from hbat.orchestrator.config import ConfigError

        raise ConfigError(f"{out} holds a model derived differently ({marker}); use a new output_dir")
    model = load_causal_lm(spec["base"], dtype="float32", device="cpu")
    tokenizer = load_tokenizer(spec["base"])
    with torch.no_grad():
        if spec.get("keep_layers"):
            _truncate(model, int(spec["keep_layers"]))
        if spec.get("noise"):
            gen = torch.Generator().manual_seed(int(spec.get("seed", 0)))
            for p in model.parameters():
                std = p.float().std() if p.numel() > 1 else p.abs().float()
                p.add_(torch.randn(p.shape, generator=gen) * float(spec["noise"]) * std)
    params = sum(p.numel() for p in model.parameters())
    save_checkpoint(model, tokenizer, out, extra={"derive": spec, "params": params})
    log.info("derived %s from %s (%s): %d parameters", out, spec["base"], spec, params)
    return str(out)


def _truncate(model, k: int) -> None:
    layers = model.model.layers
    if k >= len(layers):
        raise ValueError(f"keep_layers={k} but the model has only {len(layers)} layers")
    model.model.layers = layers[:k]
    model.config.num_hidden_layers = k
    types = getattr(model.config, "layer_types", None)
    if isinstance(types, list):
        model.config.layer_types = types[:k]
