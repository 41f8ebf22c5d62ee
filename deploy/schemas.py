"""Request and response bodies of the serving API, with OpenAI's field names.

Requests validate strictly (``"max_tokens": "5"`` or ``true`` is a 400, not a
silent cast) but ignore fields we do not know, as vLLM does, so current
OpenAI clients that send newer optional fields keep working. Fields that
would change the answer and that we cannot honour (tools, non-text content,
``suffix``) are rejected by the handlers with a 400 rather than ignored.

Extensions beyond OpenAI (as in vLLM): ``top_k`` on both generation
endpoints, and the reward endpoint ``POST /v1/reward``.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Int = Annotated[int, Field(strict=True)]
Num = Annotated[float, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------- chat
class TextPart(_Request):
    type: Literal["text"]
    text: Str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Str | list[TextPart] | None = None
    name: Str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self) -> dict[str, str]:
        # "developer" is OpenAI's newer name for the system role
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class StreamOptions(_Request):
    include_usage: Bool = False


class _Sampling(_Request):
    model: Str
    temperature: Annotated[Num, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[Num, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[Int, Field(ge=0)] | None = None
    n: Annotated[Int, Field(ge=1)] = 1
    stop: Str | Annotated[list[Str], Field(max_length=4)] | None = None
    seed: Annotated[Int, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    presence_penalty: Annotated[Num, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[Num, Field(ge=-2.0, le=2.0)] = 0.0
    logit_bias: dict[str, Annotated[Num, Field(ge=-100.0, le=100.0)]] | None = None
    stream: Bool = False
    stream_options: StreamOptions | None = None
    user: Str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[Int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[Int, Field(ge=1)] | None = None
    logprobs: Bool = False
    top_logprobs: Annotated[Int, Field(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class CompletionRequest(_Sampling):
    prompt: Str | list[Str] | list[Int] | list[list[Int]]
    max_tokens: Annotated[Int, Field(ge=1)] | None = 16
    echo: Bool = False
    logprobs: Annotated[Int, Field(ge=0, le=20)] | None = None
    suffix: Str | None = None
    best_of: Annotated[Int, Field(ge=1)] | None = None


# -------------------------------------------------------------- responses
def _now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: str | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hbat"
    root: str | None = None
    weight_version: int | str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ------------------------------------------------------------------ reward
class RewardItem(_Request):
    """One thing to score: ``prompt`` + ``response``, or a conversation whose
    last message is the assistant's response."""

    prompt: Str | Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    response: Str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=2)] | None = None

    @model_validator(mode="after")
    def _one_form(self):
        pair = self.prompt is not None or self.response is not None
        if pair and self.messages is not None:
            raise ValueError("give either 'prompt' and 'response' or 'messages', not both")
        if self.messages is not None:
            if self.messages[-1].role != "assistant":
                raise ValueError("the last of 'messages' must be the assistant response to score")
            return self
        if self.prompt is None or self.response is None:
            raise ValueError("each input needs 'prompt' and 'response' (strings) or 'messages'")
        return self

    def prompt_and_response(self) -> tuple[str | list[dict], str]:
        if self.messages is not None:
            return [m.for_template() for m in self.messages[:-1]], self.messages[-1].text()
        prompt = self.prompt if isinstance(self.prompt, str) else [m.for_template() for m in self.prompt]
        return prompt, self.response


class RewardRequest(_Request):
    model: Str | None = None
    input: Annotated[list[RewardItem], Field(min_length=1)]


class RewardScore(BaseModel):
    object: Literal["reward"] = "reward"
    index: int
    score: float


class RewardResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[RewardScore]
    usage: Usage
    weight_version: int | str | None = None
