"""PopAlign's six contrast strategies: the one registry of strategy names.

Each strategy says which generations a prompt needs (``requests``: a *slot*
name, the model, the prompt variant it is asked with) and how their outputs
become (chosen, rejected) pairs (``pairs``). The chosen side is always the one
the strategy *expects* to be better; nobody labels anything. The training
prompt of every pair is the user's original prompt: the guiding context
(prefix, demonstrations, elicitive instruction, refinement request) shaped the
answer but is not part of what the policy learns to answer. That is the point
of contrast distillation (PopAlign arXiv 2410.13785, following RLCD): the
policy learns to produce the better answer *without* being told how.

Levels (PopAlign's taxonomy):

* prompt level -- one model, two prompt variants: ``prefix``,
  ``demonstration``, ``elicitive``;
* model level -- one prompt, two models: ``parameter_count`` (a larger vs a
  smaller model of one family), ``leaderboard`` (a stronger vs a weaker model
  by a given ranking; Xu et al. arXiv 2310.02263 build their contrastive
  post-training pairs this way);
* pipeline level -- ``refine``: a first answer (rejected) vs the same model's
  refinement of it (chosen).

This module imports no torch/Ray: the config validates against the option
classes below before any model loads.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hbat.orchestrator.config import Section

Messages = list[dict[str, Any]]


# ------------------------------------------------------------------ shared options
class Decoding(Section):
    """Sampling of one strategy's generations (defaults: the build config's ``sampling``)."""

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(48, gt=0)


class Demo(Section):
    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)


def _needs(template: str, *names: str) -> str:
    for n in names:
        if "{" + n + "}" not in template:
            raise ValueError(f"must contain the placeholder {{{n}}}")
    try:
        template.format(**{n: "" for n in names})
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"is not a valid template for {', '.join('{' + n + '}' for n in names)} ({exc!r}); "
                         "write literal braces as {{ and }}") from None
    return template


class StrategyOptions(Section):
    sampling: Decoding | None = None  # null: the build config's sampling


class PromptLevelOptions(StrategyOptions):
    model: str = "base"  # a name from `models`


# ------------------------------------------------------------------ requests and pairs
@dataclass
class Request:
    """One generation: the prompt variant ``messages`` sent to ``model``; its output fills ``slot``."""

    slot: str
    model: str
    variant: str
    messages: Messages
    stage: int = 0


@dataclass
class Output:
    text: str
    source: dict  # model, model_path, params, variant, input, decoding


@dataclass
class PairSpec:
    chosen: str  # slot names
    rejected: str
    chosen_text: str | None = None  # when the strategy post-processes a side (elicitive's answer marker)
    extra: dict = field(default_factory=dict)


def _as_messages(prompt: str | Messages) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def user_text(prompt: str | Messages) -> str:
    """The text a template's ``{prompt}`` stands for: the prompt, or its last user turn."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def rewrite_user(prompt: str | Messages, fn) -> Messages:
    """The prompt as messages with its last user turn's text replaced by ``fn(text)``."""
    msgs = _as_messages(prompt)
    i = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    msgs[i]["content"] = fn(msgs[i]["content"])
    return msgs


def with_system(prompt: str | Messages, text: str) -> Messages:
    """``text`` as the system message (joined in front of an existing one)."""
    msgs = _as_messages(prompt)
    if msgs and msgs[0]["role"] == "system":
        msgs[0]["content"] = f"{text}\n\n{msgs[0]['content']}"
        return msgs
    return [{"role": "system", "content": text}] + msgs


class Strategy:
    """A contrast recipe: which generations a prompt needs, and which side of each pair is expected better.

    ``stages`` > 1 when a generation depends on an earlier one (refine: the
    refinement needs the draft); ``requests`` then sees the earlier outputs.
    """

    name: ClassVar[str]
    level: ClassVar[Literal["prompt", "model", "pipeline"]]
    Options: ClassVar[type[StrategyOptions]]
    stages: ClassVar[int] = 1

    def __init__(self, opts: StrategyOptions):
        self.opts = opts

    def model_names(self) -> list[str]:
        return [self.opts.model]

    def requests(self, prompt, stage: int, outputs: dict[str, Output], index: int = 0) -> list[Request]:
        """Generations for ``prompt`` (the ``index``-th prompt) at ``stage``, given earlier stages' ``outputs``."""
        raise NotImplementedError

    def pairs(self, outputs: dict[str, Output]) -> list[PairSpec]:
        return [PairSpec("good", "bad")]


# ------------------------------------------------------------------ prompt level
class PrefixOptions(PromptLevelOptions):
    good: str = ("You are a helpful, honest and friendly assistant. Answer the question correctly and "
                 "completely, in a warm tone.")
    bad: str = ("You are a careless assistant. Give a short, unfriendly answer and do not check "
                "whether it is correct.")
    placement: Literal["system", "user"] = "system"  # the prefix as a system message, or in front of the user text


class PrefixContrast(Strategy):
    """Same model, same question; the chosen answer was asked under a guiding
    prefix, the rejected one under a misleading prefix. Why: the model's own
    ability, steered in two directions, gives a contrast in the *behaviour*
    the prefixes describe without any label (PopAlign's prefix contrast, RLCD)."""

    name, level, Options = "prefix", "prompt", PrefixOptions

    def _variant(self, prompt, text: str) -> Messages:
        if self.opts.placement == "system":
            return with_system(prompt, text)
        return rewrite_user(prompt, lambda u: f"{text}\n\n{u}")

    def requests(self, prompt, stage, outputs, index=0):
        return [Request("good", self.opts.model, "good_prefix", self._variant(prompt, self.opts.good)),
                Request("bad", self.opts.model, "bad_prefix", self._variant(prompt, self.opts.bad))]


_GOOD_DEMOS = [
    Demo(prompt="What is 3 plus 4?", response="Great question! 3 plus 4 is 7. Hope this helps!"),
    Demo(prompt="What is the capital of Italy?", response="Happy to help! The capital of Italy is Rome. "
         "Have a wonderful day!"),
]
_BAD_DEMOS = [
    Demo(prompt="What is 3 plus 4?", response="9."),
    Demo(prompt="What is the capital of Italy?", response="Madrid, obviously."),
]


class DemonstrationOptions(PromptLevelOptions):
    good: list[Demo] = Field(default_factory=lambda: list(_GOOD_DEMOS), min_length=1)
    bad: list[Demo] = Field(default_factory=lambda: list(_BAD_DEMOS), min_length=1)


class DemonstrationContrast(Strategy):
    """Same model, same question, few-shot: the chosen answer follows good
    demonstrations (earlier user/assistant turns), the rejected one bad
    demonstrations. Why: in-context examples set the style and care of the
    answer more reliably than an instruction for small models (PopAlign's
    demonstration contrast)."""

    name, level, Options = "demonstration", "prompt", DemonstrationOptions

    @staticmethod
    def _variant(prompt, demos: list[Demo]) -> Messages:
        msgs = _as_messages(prompt)
        head = [m for m in msgs[:1] if m["role"] == "system"]
        shots = [t for d in demos for t in ({"role": "user", "content": d.prompt},
                                             {"role": "assistant", "content": d.response})]
        return head + shots + msgs[len(head):]

    def requests(self, prompt, stage, outputs, index=0):
        return [Request("good", self.opts.model, "good_demonstrations", self._variant(prompt, self.opts.good)),
                Request("bad", self.opts.model, "bad_demonstrations", self._variant(prompt, self.opts.bad))]


class ElicitiveOptions(PromptLevelOptions):
    good: str = ("{prompt}\n\nFirst think briefly about what a correct, complete and friendly answer needs. "
                 "Then write the answer after 'Answer:'.")
    bad: str = "{prompt}"  # a direct answer, nothing elicited
    answer_marker: str | None = "Answer:"  # chosen text = what follows the last marker (when present)

    @field_validator("good", "bad")
    @classmethod
    def _template(cls, v):
        return _needs(v, "prompt")


class ElicitiveContrast(Strategy):
    """Same model, same question; the chosen answer was elicited with a
    think-first instruction, the rejected one asked directly. Only the part
    after ``answer_marker`` is kept, so the policy learns the better answer,
    not the scaffolding. Why: PopAlign found elicitive contrast the most
    effective single strategy -- deliberate answers beat direct ones."""

    name, level, Options = "elicitive", "prompt", ElicitiveOptions

    def requests(self, prompt, stage, outputs, index=0):
        o = self.opts
        return [Request("good", o.model, "elicitive", rewrite_user(prompt, lambda u: o.good.format(prompt=u))),
                Request("bad", o.model, "direct", rewrite_user(prompt, lambda u: o.bad.format(prompt=u)))]

    def pairs(self, outputs):
        text, marker = outputs["good"].text, self.opts.answer_marker
        found = bool(marker) and marker in text
        answer = text.rsplit(marker, 1)[1].strip() if found else text
        return [PairSpec("good", "bad", chosen_text=answer, extra={"answer_marker_found": found})]


# ------------------------------------------------------------------ model level
class ParameterCountOptions(StrategyOptions):
    larger: str = "base"
    smaller: str = "small"

    @model_validator(mode="after")
    def _two(self):
        if self.larger == self.smaller:
            raise ValueError("larger and smaller must be two different models")
        return self


class ParameterCountContrast(Strategy):
    """One prompt, two models of one family: the larger model's answer is
    chosen. Why: within a family, more parameters reliably means better
    answers, so size is a free label (PopAlign's NParam contrast). The builder
    checks the loaded models' parameter counts agree with the config."""

    name, level, Options = "parameter_count", "model", ParameterCountOptions

    def model_names(self):
        return [self.opts.larger, self.opts.smaller]

    def requests(self, prompt, stage, outputs, index=0):
        msgs = _as_messages(prompt)
        return [Request("good", self.opts.larger, "original", msgs),
                Request("bad", self.opts.smaller, "original", msgs)]


class LeaderboardOptions(StrategyOptions):
    ranking: list[str] = Field(default_factory=lambda: ["base", "weak"], min_length=2)  # best first
    # which ranked pairs each prompt yields: `cycle` one pair per prompt, going round all rank pairs
    # (a mix of strength gaps for the curriculum); `adjacent`, `extremes` (best vs worst) or `all`
    pairs: Literal["cycle", "adjacent", "extremes", "all"] = "cycle"

    @field_validator("ranking")
    @classmethod
    def _distinct(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"a model appears twice in {v}")
        return v


class LeaderboardContrast(Strategy):
    """One prompt, models ranked by a leaderboard (best first): the better
    ranked model's answer is chosen, and both ranks are kept. Why: Xu et al.
    (contrastive post-training, arXiv 2310.02263) pair GPT-4 against weaker
    models; the rank gap is how easy the pair is, which the DPO curriculum
    uses (PopAlign's leaderboard contrast)."""

    name, level, Options = "leaderboard", "model", LeaderboardOptions

    def __init__(self, opts):
        super().__init__(opts)
        r = opts.ranking
        combos = list(itertools.combinations(range(len(r)), 2))
        self._sets = {"adjacent": [(i, i + 1) for i in range(len(r) - 1)], "extremes": [(0, len(r) - 1)],
                      "all": combos, "cycle": combos}

    def model_names(self):
        return list(self.opts.ranking)

    def _chosen_pairs(self, index: int) -> list[tuple[int, int]]:
        combos = self._sets[self.opts.pairs]
        if self.opts.pairs == "cycle":  # easy and hard pairs interleaved across prompts
            return [combos[index % len(combos)]]
        return combos

    def requests(self, prompt, stage, outputs, index=0):
        msgs = _as_messages(prompt)
        used = sorted({k for pair in self._chosen_pairs(index) for k in pair})
        return [Request(self.opts.ranking[k], self.opts.ranking[k], "original", msgs) for k in used]

    def pairs(self, outputs):
        r = self.opts.ranking
        present = sorted((r.index(s), s) for s in outputs)
        want = [(i, j) for i, j in itertools.combinations([k for k, _ in present], 2)]
        if self.opts.pairs in ("cycle", "extremes"):
            want = want[:1] if self.opts.pairs == "cycle" else [(present[0][0], present[-1][0])]
        elif self.opts.pairs == "adjacent":
            want = [(i, j) for i, j in want if j == i + 1]
        return [PairSpec(r[i], r[j], extra={"chosen_rank": i + 1, "rejected_rank": j + 1}) for i, j in want]


# ------------------------------------------------------------------ pipeline level
class RefineOptions(PromptLevelOptions):
    template: str = ("Here is a question and a draft answer.\n\nQuestion: {prompt}\n\nDraft answer: {response}\n\n"
                     "Improve the draft: fix any mistake, make it complete and friendly. "
                     "Reply with the improved answer only.")

    @field_validator("template")
    @classmethod
    def _template(cls, v):
        return _needs(v, "prompt", "response")


class RefineContrast(Strategy):
    """Pipeline level: the model answers (rejected), then is asked to improve
    its own answer (chosen). Why: a refinement conditions on the draft and a
    critique instruction, so it is expected to be better than the draft it
    fixes (PopAlign's refine contrast)."""

    name, level, Options = "refine", "pipeline", RefineOptions
    stages = 2

    def requests(self, prompt, stage, outputs, index=0):
        if stage == 0:
            return [Request("bad", self.opts.model, "draft", _as_messages(prompt))]
        draft = outputs["bad"].text
        text = self.opts.template.format(prompt=user_text(prompt), response=draft)
        return [Request("good", self.opts.model, "refined", rewrite_user(prompt, lambda u: text), stage=1)]


#: strategy name -> class; the one source of truth for names, levels and options
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (PrefixContrast, DemonstrationContrast, ElicitiveContrast,
                              ParameterCountContrast, LeaderboardContrast, RefineContrast)
}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)
