"""OpenAI-compatible chat/completions app for a policy checkpoint.

Routes (mount the app at route prefix ``/``):

* ``POST /v1/chat/completions`` — chat, ``stream: true`` answers with
  server-sent events (``data: {chunk}`` ... ``data: [DONE]``);
* ``POST /v1/completions`` — text completion (string, list of strings or
  token ids as prompt), streaming too;
* ``GET /v1/models`` and ``GET /v1/models/{id}``;
* ``GET /health`` — no key needed.

``build_app(args)`` is a Serve application builder
(``import_path: hbat.deploy.openai_app:build_app``). ``backend`` picks the
engine: ``transformers`` is :class:`PolicyServer` below (CPU, or one GPU
with ``ray_actor_options: {num_gpus: 1}``); ``vllm`` is Ray's own
``ray.serve.llm`` app (see :mod:`hbat.deploy.vllm_backend`); ``auto`` takes
vLLM when it is installed and the cluster has GPUs.
"""


import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve
from ray.serve import Application

from hbat.deploy.budget import Reservation, TokenBudget
from hbat.deploy.engine import StepToken, TransformersEngine
from hbat.deploy.errors import APIError, bad_request, install_error_handlers
from hbat.deploy.guard import GuardMiddleware
from hbat.deploy.replica import ModelReplica
from hbat.deploy.sampling import SamplingParams
from hbat.deploy.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Delta,
    ModelCard,
    ModelList,
    TokenLogprob,
    TopLogprob,
    Usage,
    new_id,
)
from hbat.deploy.settings import PolicyAppArgs, WeightsConfig

log = logging.getLogger(__name__)

app = FastAPI(title="hbat policy (OpenAI-compatible)")
app.add_middleware(GuardMiddleware)
install_error_handlers(app)


def _sse(payload: Any) -> str:
    data = payload.model_dump_json() if hasattr(payload, "model_dump_json") else json.dumps(payload)
    return f"data: {data}\n\n"


def _next_or_none(gen: Iterator):
    return next(gen, None)


class _Choice:
    """Accumulates one choice of a non-streaming answer."""

    def __init__(self):
        self.text: list[str] = []
        self.tokens: list[StepToken] = []
        self.finish_reason: str | None = None


@serve.deployment(name="PolicyServer")
@serve.ingress(app)
class PolicyServer(ModelReplica):
    """One replica = one model copy; ``reconfigure`` (re)loads the weights."""

    def __init__(self, args: dict):
        self._setup(PolicyAppArgs.model_validate(args), app, "hbat-generate")
        self.budget = TokenBudget(self.limits.max_request_tokens, self.limits.max_concurrent_tokens)

    def _make_engine(self, cfg: WeightsConfig) -> TransformersEngine:
        return TransformersEngine(cfg.checkpoint, dtype=self.args.dtype, device=self.args.device,
                                  weight_version=cfg.weight_version)

    def _fingerprint(self, engine: TransformersEngine) -> str | None:
        return None if engine.weight_version is None else f"hbat-v{engine.weight_version}"

    def _check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves '{self.model_name}' (see GET /v1/models).",
                param="model",
                code="model_not_found",
            )

    # ------------------------------------------------------------ routes
    @app.get("/health")
    async def health(self):
        return {"status": "ok", "model": self.model_name, "weight_version": self._engine().weight_version}

    @app.get("/v1/models")
    async def models(self) -> ModelList:
        return ModelList(data=[self._card()])

    @app.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str) -> ModelCard:
        self._check_model(model_id)
        return self._card()

    def _card(self) -> ModelCard:
        engine = self._engine()
        return ModelCard(
            id=self.model_name,
            created=engine.loaded_at,
            root=engine.checkpoint,
            weight_version=engine.weight_version,
            max_model_len=engine.context_len,
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest):
        engine = self._engine()
        self._check_model(body.model)
        if body.tools:
            raise bad_request("Tool/function calling is not supported by this server.", "tools")
        fmt = (body.response_format or {}).get("type", "text")
        if fmt != "text":
            raise bad_request(f"response_format type '{fmt}' is not supported; only 'text'.", "response_format")
        if not engine.has_chat_template:
            raise bad_request(
                "This model's tokenizer has no chat template; use POST /v1/completions.", "messages"
            )
        if body.top_logprobs and not body.logprobs:
            raise bad_request("top_logprobs requires logprobs to be true.", "top_logprobs")
        try:
            prompt_ids = engine.chat_prompt_ids([m.for_template() for m in body.messages])
        except Exception as exc:  # noqa: BLE001 - jinja templates raise many types
            raise bad_request(f"The chat template rejected these messages: {exc}", "messages") from None
        max_tokens, mt_param = body.requested_max_tokens()
        params = self._sampling(
            body, engine, [len(prompt_ids)], max_tokens, mt_param, "messages",
            logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0,
        )
        held = self.budget.reserve(self.budget.cost(params.n, [len(prompt_ids)], params.max_tokens))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return self._streaming(self._chat_stream(engine, prompt_ids, params, include_usage), held)
        with held:
            choices = await self._collect(engine, prompt_ids, params)
        completion_tokens = sum(len(c.tokens) for c in choices)
        return ChatCompletion(
            model=self.model_name,
            choices=[
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content="".join(c.text)),
                    finish_reason=c.finish_reason,
                    logprobs=self._chat_logprobs(engine, c.tokens) if params.logprobs else None,
                )
                for i, c in enumerate(choices)
            ],
            usage=Usage(
                prompt_tokens=len(prompt_ids),
                completion_tokens=completion_tokens,
                total_tokens=len(prompt_ids) + completion_tokens,
            ),
            system_fingerprint=self._fingerprint(engine),
        )

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest):
        engine = self._engine()
        self._check_model(body.model)
        if body.suffix:
            raise bad_request("suffix (insertion) is not supported.", "suffix")
        if body.best_of is not None and body.best_of != body.n:
            raise bad_request("best_of other than n is not supported.", "best_of")
        if body.echo and body.logprobs is not None:
            raise bad_request("echo together with logprobs is not supported.", "echo")
        prompts = self._completion_prompts(engine, body.prompt)
        params = self._sampling(
            body, engine, [len(p) for p in prompts], body.max_tokens, "max_tokens", "prompt",
            logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0,
        )
        held = self.budget.reserve(self.budget.cost(params.n, [len(p) for p in prompts], params.max_tokens))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return self._streaming(self._completion_stream(engine, prompts, params, body.echo, include_usage), held)
        out: list[CompletionChoice] = []
        completion_tokens = 0
        with held:
            collected = [await self._collect(engine, prompt_ids, params) for prompt_ids in prompts]
        for p_idx, prompt_ids in enumerate(prompts):
            prefix = engine.decode(prompt_ids) if body.echo else ""
            for j, c in enumerate(collected[p_idx]):
                completion_tokens += len(c.tokens)
                out.append(
                    CompletionChoice(
                        index=p_idx * params.n + j,
                        text=prefix + "".join(c.text),
                        finish_reason=c.finish_reason,
                        logprobs=self._completion_logprobs(engine, c.tokens) if params.logprobs else None,
                    )
                )
        prompt_tokens = sum(len(p) for p in prompts)
        return Completion(
            model=self.model_name,
            choices=out,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
            system_fingerprint=self._fingerprint(engine),
        )

    # ------------------------------------------------------ validation
    def _completion_prompts(self, engine: TransformersEngine, prompt) -> list[list[int]]:
        if isinstance(prompt, str):
            prompts = [engine.text_prompt_ids(prompt)]
        elif not prompt:
            raise bad_request("prompt must not be an empty list.", "prompt")
        elif isinstance(prompt[0], str):
            prompts = [engine.text_prompt_ids(p) for p in prompt]
        elif isinstance(prompt[0], int):
            prompts = [list(prompt)]
        else:
            prompts = [list(p) for p in prompt]
        if len(prompts) > self.limits.max_prompts:
            raise bad_request(
                f"{len(prompts)} prompts in one request; this server allows at most {self.limits.max_prompts}.",
                "prompt",
            )
        for i, ids in enumerate(prompts):
            bad = [t for t in ids if not 0 <= t < engine.vocab_size]
            if bad:
                raise bad_request(
                    f"token id {bad[0]} is outside the vocabulary (0..{engine.vocab_size - 1}).",
                    "prompt" if len(prompts) == 1 else f"prompt[{i}]",
                )
        return prompts

    def _sampling(
        self,
        body,
        engine: TransformersEngine,
        prompt_lens: list[int],
        max_tokens: int | None,
        max_tokens_param: str,
        prompt_param: str,
        *,
        logprobs: bool,
        top_logprobs: int,
    ) -> SamplingParams:
        lim = self.limits
        if body.n > lim.max_n:
            raise bad_request(f"n={body.n} is over this server's limit of {lim.max_n}.", "n")
        if max_tokens is not None and max_tokens > lim.max_tokens:
            raise bad_request(
                f"{max_tokens_param}={max_tokens} is over this server's limit of {lim.max_tokens}.",
                max_tokens_param,
                code="max_tokens_exceeded",
            )
        ctx = engine.context_len
        max_prompt = min(lim.max_prompt_tokens or ctx - 1, ctx - 1)
        longest = max(prompt_lens)
        if min(prompt_lens) == 0:
            raise bad_request("The prompt is empty.", prompt_param)
        if longest > max_prompt:
            raise bad_request(
                f"The prompt is {longest} tokens, over the limit of {max_prompt} prompt tokens "
                f"(the model's context length is {ctx}).",
                prompt_param,
                code="context_length_exceeded",
            )
        if max_tokens is None:  # the default, shrunk to what the token budget allows
            max_tokens = max(1, min(lim.default_max_tokens, lim.max_tokens, ctx - longest,
                                    self.budget.largest_max_tokens(body.n, longest)))
        elif longest + max_tokens > ctx:
            raise bad_request(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} in the completion). "
                f"Please reduce the prompt or {max_tokens_param}.",
                max_tokens_param,
                code="context_length_exceeded",
            )
        self.budget.check(body.n, longest, max_tokens, max_tokens_param)
        bias: dict[int, float] = {}
        for key, value in (body.logit_bias or {}).items():
            try:
                tid = int(key)
            except ValueError:
                raise bad_request(f"logit_bias key '{key}' is not a token id.", "logit_bias") from None
            if not 0 <= tid < engine.vocab_size:
                raise bad_request(f"logit_bias token id {tid} is outside the vocabulary.", "logit_bias")
            bias[tid] = float(value)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else float(body.temperature),
            top_p=1.0 if body.top_p is None else float(body.top_p),
            top_k=body.top_k or 0,
            n=body.n,
            stop=body.stop_list(),
            seed=body.seed,
            presence_penalty=float(body.presence_penalty),
            frequency_penalty=float(body.frequency_penalty),
            logit_bias=bias,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )

    # ------------------------------------------------------- generation
    @staticmethod
    def _streaming(stream: AsyncIterator[str], held: Reservation) -> StreamingResponse:
        """An SSE response that gives the request's tokens back when the stream ends (or is dropped)."""

        async def body():
            try:
                async for item in stream:
                    yield item
            finally:
                held.release()

        gen = body()
        held.release_with(gen)
        return StreamingResponse(gen, media_type="text/event-stream")

    async def _steps(self, engine: TransformersEngine, prompt_ids: list[int], params: SamplingParams
                     ) -> AsyncIterator[list[StepToken]]:
        gen = engine.generate(prompt_ids, params)
        loop = asyncio.get_running_loop()
        try:
            while True:
                events = await loop.run_in_executor(self._executor, _next_or_none, gen)
                if events is None:
                    return
                yield events
        finally:
            # close on the generation thread: it may still be inside a step
            self._executor.submit(gen.close)

    async def _collect(self, engine, prompt_ids, params) -> list[_Choice]:
        choices = [_Choice() for _ in range(params.n)]
        async for events in self._steps(engine, prompt_ids, params):
            for ev in events:
                c = choices[ev.row]
                c.text.append(ev.text)
                if ev.token_id >= 0:
                    c.tokens.append(ev)
                if ev.finish_reason:
                    c.finish_reason = ev.finish_reason
        return choices

    async def _chat_stream(self, engine, prompt_ids, params, include_usage: bool) -> AsyncIterator[str]:
        cid, created = new_id("chatcmpl"), int(time.time())
        fp = self._fingerprint(engine)

        def chunk(choices, usage=None):
            return _sse(ChatCompletionChunk(id=cid, created=created, model=self.model_name, choices=choices,
                                            usage=usage, system_fingerprint=fp))

        completion_tokens = 0
        try:
            for i in range(params.n):
                yield chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
            async for events in self._steps(engine, prompt_ids, params):
                for ev in events:
                    completion_tokens += ev.token_id >= 0
                    lp = self._chat_logprobs(engine, [ev]) if params.logprobs and ev.logprob is not None else None
                    if ev.text or ev.finish_reason or lp:
                        yield chunk([ChunkChoice(index=ev.row, delta=Delta(content=ev.text or None),
                                                 finish_reason=ev.finish_reason, logprobs=lp)])
            if include_usage:
                yield chunk([], Usage(prompt_tokens=len(prompt_ids), completion_tokens=completion_tokens,
                                      total_tokens=len(prompt_ids) + completion_tokens))
        except Exception as exc:  # noqa: BLE001 - the status line is sent; report in-band
            log.exception("chat stream failed")
            yield _sse(APIError(500, f"generation failed: {exc}", type="server_error").body())
        yield "data: [DONE]\n\n"

    async def _completion_stream(self, engine, prompts, params, echo: bool, include_usage: bool
                                 ) -> AsyncIterator[str]:
        cid, created = new_id("cmpl"), int(time.time())
        fp = self._fingerprint(engine)

        def chunk(choices, usage=None):
            return _sse(Completion(id=cid, created=created, model=self.model_name, choices=choices,
                                   usage=usage, system_fingerprint=fp))

        completion_tokens = 0
        try:
            for p_idx, prompt_ids in enumerate(prompts):
                base = p_idx * params.n
                if echo:
                    text = engine.decode(prompt_ids)
                    for j in range(params.n):
                        yield chunk([CompletionChoice(index=base + j, text=text)])
                async for events in self._steps(engine, prompt_ids, params):
                    for ev in events:
                        completion_tokens += ev.token_id >= 0
                        lp = (self._completion_logprobs(engine, [ev])
                              if params.logprobs and ev.logprob is not None else None)
                        if ev.text or ev.finish_reason or lp:
                            yield chunk([CompletionChoice(index=base + ev.row, text=ev.text,
                                                          finish_reason=ev.finish_reason, logprobs=lp)])
            if include_usage:
                prompt_tokens = sum(len(p) for p in prompts)
                yield chunk([], Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                      total_tokens=prompt_tokens + completion_tokens))
        except Exception as exc:  # noqa: BLE001
            log.exception("completion stream failed")
            yield _sse(APIError(500, f"generation failed: {exc}", type="server_error").body())
        yield "data: [DONE]\n\n"

    # --------------------------------------------------------- logprobs
    @staticmethod
    def _chat_logprobs(engine: TransformersEngine, tokens: list[StepToken]) -> ChoiceLogprobs:
        content = []
        for ev in tokens:
            if ev.logprob is None:
                continue
            text = engine.token_text(ev.token_id)
            tops = [
                TopLogprob(token=(t := engine.token_text(tid)), logprob=lp, bytes=list(t.encode()))
                for tid, lp in (ev.top_logprobs or [])
            ]
            content.append(TokenLogprob(token=text, logprob=ev.logprob, bytes=list(text.encode()), top_logprobs=tops))
        return ChoiceLogprobs(content=content)

    @staticmethod
    def _completion_logprobs(engine: TransformersEngine, tokens: list[StepToken]) -> CompletionLogprobs:
        out = CompletionLogprobs()
        offset = 0
        for ev in tokens:
            if ev.logprob is None:
                continue
            text = engine.token_text(ev.token_id)
            out.tokens.append(text)
            out.token_logprobs.append(ev.logprob)
            out.top_logprobs.append({engine.token_text(t): lp for t, lp in (ev.top_logprobs or [])} or None)
            out.text_offset.append(offset)
            offset += len(text)
        return out


def build_app(args: dict | PolicyAppArgs) -> Application:
    """Serve application builder: ``hbat.deploy.openai_app:build_app``."""
    a = args if isinstance(args, PolicyAppArgs) else PolicyAppArgs.model_validate(dict(args or {}))
    from hbat.deploy.vllm_backend import build_vllm_app, resolve_backend

    if resolve_backend(a) == "vllm":
        return build_vllm_app(a)
    return PolicyServer.options(**a.serve_options(), user_config=a.weights()).bind(a.model_dump(mode="json"))


__all__ = ["PolicyServer", "app", "build_app"]
