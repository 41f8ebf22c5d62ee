"""Offline preference phases: the DPO family (DPO, cDPO, IPO, SLiC-HF) on pairs
and the point-wise losses (point-wise DPO, ULMA) on labelled responses.

The loss comes from the registry (``preference_loss.loss``); its options are the
registry's defaults overlaid with what the config sets, resolved once here,
so every step and the Fisher batches use the same ones.
"""

from __future__ import annotations

from hbat.actors.policy import LossPart
from hbat.objectives import get_preference_loss
from hbat.orchestrator.config import Config, ConfigError
from hbat.orchestrator.data import collate_pairwise, collate_pointwise, collate_sft, curriculum_batch, curriculum_order
from hbat.orchestrator.steps.base import StepContext, StepRunner, mix

def preference_options(cfg: Config) -> dict:
    """The preference loss's keyword options: registry defaults, then what the config sets.

    A key the loss does not take is a ConfigError naming it and the valid ones.
    """
    d = cfg.preference_loss
    try:
        spec = get_preference_loss(d.loss)
    except ValueError as exc:
        raise ConfigError(f"preference_loss.loss: {exc}") from None
    valid = spec.option_names()
    given = dict(d.options)
    for key in ("beta", "label_smoothing"):
        if getattr(d, key) is not None:
            given[key] = getattr(d, key)
    bad = sorted(set(given) - set(valid))
    if bad:
        where = ", ".join(f"preference_loss.{k}" if k in ("beta", "label_smoothing") else f"preference_loss.options.{k}" for k in bad)
        raise ConfigError(f"{where}: not an option of preference_loss.loss '{d.loss}' (valid: {', '.join(valid) or 'none'})")
    average = spec.average_logps if d.average_logps is None else d.average_logps
    return {"loss": d.loss, **spec.defaults, **given, "average_logps": average}

class PreferenceStep(StepRunner):
    name = "dpo"
    section = "preference_loss"

    def __init__(self, cfg, data, roles):
        super().__init__(cfg, data, roles)
        self.spec = get_preference_loss(cfg.preference_loss.loss)
        self.options = preference_options(cfg)

    @classmethod
    def extra_roles(cls, cfg) -> list[str]:
        return ["reference"]  # every preference loss is a log-ratio to the reference

    @classmethod
    def config_errors(cls, cfg) -> list[str]:
        errors = []
        try:
            preference_options(cfg)
        except ConfigError as exc:
            return [str(exc)]
        p = cfg.preference_loss
        kind = get_preference_loss(p.loss).kind
        key = "pointwise" if kind == "pointwise" else "preference"
        if getattr(cfg.data, key) is None:
            errors.append(f"preference_loss.loss '{p.loss}' is {kind}: set data.{key}")
        if p.curriculum != "none" and kind != "pairwise":
            errors.append(f"preference_loss.curriculum '{p.curriculum}' orders pairs; preference_loss.loss "
                          f"'{p.loss}' is {kind}")
        return errors

    @property
    def data_key(self) -> str:
        return "pointwise" if self.spec.kind == "pointwise" else "preference"

    def dataset(self):
        """Its data; with ``preference_loss.curriculum`` the pairs sorted easy to hard
        before the schedule shards them (``orchestrator/data/curriculum.py``)."""
        if not hasattr(self, "_ordered"):
            self._ordered = curriculum_order(super().dataset(), self.cfg.preference_loss.curriculum)
        return self._ordered

    def step_indices(self, n, bs, phase_index, step, steps):
        """A curriculum walks its window from the easy to the hard end of the shard."""
        if self.cfg.preference_loss.curriculum != "none":
            return curriculum_batch(n, bs, step, steps)
        return super().step_indices(n, bs, phase_index, step, steps)

    def part(self, examples: list[dict]) -> LossPart:
        """A collated preference batch with its reference log-probs and the loss's resolved options."""
        collate = collate_pairwise if self.spec.kind == "pairwise" else collate_pointwise
        batch = collate(examples, self.data.pad_id)
        batch["ref_logps"] = self.roles.reference.map_rows("sequence_logps", batch).get()
        return LossPart(self.spec.kind, batch, options=dict(self.options))

    def step(self, examples, ctx: StepContext) -> dict:
        return self.roles.policy.train(mix([self.part(examples)], ctx, ctx.step), self.optim).get()

    def fisher_parts(self, draw, n, phase_index):
        """The phase's own preference loss (``ewc.fisher_loss: phase``), or the chosen
        responses' SFT likelihood (``sft``, pairwise data only)."""
        out = []
        for k in range(n):
            ex = draw(k)
            if self.cfg.ewc.fisher_loss == "sft" and "chosen_input_ids" in ex[0]:
                ex = [{"input_ids": e["chosen_input_ids"], "loss_mask": e["chosen_loss_mask"]} for e in ex]
                out.append(LossPart("sft", collate_sft(ex, self.data.pad_id)))
            else:
                out.append(self.part(ex))
        return out
