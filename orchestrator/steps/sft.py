"""Instruction phases: next-token loss on demonstrations."""

from __future__ import annotations

from hbat.actors.policy import LossPart
from hbat.orchestrator.data import collate_sft
from hbat.orchestrator.steps.base import StepContext, StepRunner, mix

class SFTStep(StepRunner):
    name = "sft"
    section = "sft"

    @property
    def data_key(self) -> str:
        return "sft"

    def part(self, examples: list[dict]) -> LossPart:
        return LossPart("sft", collate_sft(examples, self.data.pad_id))

    def step(self, examples, ctx: StepContext) -> dict:
        return self.roles.policy.train(mix([self.part(examples)], ctx, ctx.step), self.optim).get()

    def fisher_parts(self, draw, n, phase_index):
        return [self.part(draw(k)) for k in range(n)]
