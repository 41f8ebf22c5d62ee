"""Reward-model scoring service: ``POST /v1/reward``.

Mount it at route prefix ``/v1/reward`` (beside the policy app at ``/``); it
answers ``POST`` on its root. Mounted alone at ``/`` it also answers
``POST /v1/reward``. Body::

    {"model": "<optional, checked if given>",
     "input": [{"prompt": "...", "response": "..."},
               {"prompt": [messages...], "response": "..."},
               {"messages": [..., {"role": "assistant", "content": "..."}]}]}

Answer (the shape of OpenAI's embeddings list)::

    {"object": "list", "model": "...", "weight_version": ...,
     "data": [{"object": "reward", "index": 0, "score": 0.42}, ...],
     "usage": {"prompt_tokens": N, "total_tokens": N}}

Texts are rendered by the code reward-model training uses
(:class:`hbat.orchestrator.data.Renderer`: the prompt through the chat
template with the generation prompt, then the response and the end-of-turn
token), so a served score equals the offline score of the same pair.
Requests are tokenised and checked in the handler (a 400 names the bad
``input[i]``), then Serve's ``@serve.batch`` gathers concurrent requests
into one call that scores every sequence in length-sorted micro-batches.
"""


import asyncio
import logging
import time

import torch
from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from hbat.deploy.errors import APIError, bad_request, install_error_handlers
from hbat.deploy.guard import GuardMiddleware
from hbat.deploy.replica import ModelReplica
from hbat.deploy.schemas import RewardRequest, RewardResponse, RewardScore, Usage
from hbat.deploy.settings import RewardAppArgs, WeightsConfig

log = logging.getLogger(__name__)

app = FastAPI(title="hbat reward model")
app.add_middleware(GuardMiddleware)
install_error_handlers(app)


class RewardEngine:
    """A reward model + the training renderer, on one device."""

    def __init__(self, checkpoint: str, *, dtype: str = "auto", device: str = "auto", weight_version=None):
        from hbat.models import load_reward_model, load_tokenizer
        from hbat.orchestrator.data import Renderer

        self.checkpoint = checkpoint
        self.weight_version = weight_version
        self.tokenizer = load_tokenizer(checkpoint)
        self.model = load_reward_model(checkpoint, dtype=dtype, device=device)
        self.device = next(self.model.parameters()).device
        self.renderer = Renderer(self.tokenizer)
        ctx = getattr(self.model.config, "max_position_embeddings", None)
        self.context_len = int(ctx) if ctx and ctx < 10**8 else 2048
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.loaded_at = int(time.time())

    def encode(self, prompt, response: str, field: str) -> list[int]:
        from hbat.orchestrator.data import encode_pieces

        pieces = self.renderer.pair_pieces(prompt, response, f"{field}.prompt", f"{field}.response")
        return encode_pieces(self.tokenizer, [pieces])[0][0]

    def score(self, sequences: list[list[int]], micro_batch: int) -> list[float]:
        from hbat.models import reward_scores

        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = [0.0] * len(sequences)
        for start in range(0, len(order), micro_batch):
            idx = order[start:start + micro_batch]
            width = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = sequences[i]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            with torch.inference_mode():
                scores = reward_scores(self.model, ids.to(self.device), mask.to(self.device))
            for row, i in enumerate(idx):
                out[i] = float(scores[row])
        return out


@serve.deployment(name="RewardServer")
@serve.ingress(app)
class RewardServer(ModelReplica):
    what = "reward model"

    def __init__(self, args: dict):
        self._setup(RewardAppArgs.model_validate(args), app, "hbat-reward")
        self._score_batch.set_max_batch_size(self.args.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)

    def _make_engine(self, cfg: WeightsConfig) -> RewardEngine:
        return RewardEngine(cfg.checkpoint, dtype=self.args.dtype, device=self.args.device,
                            weight_version=cfg.weight_version)

    @app.get("/health")
    async def health(self):
        engine = self._engine()
        return {"status": "ok", "model": self.model_name, "weight_version": engine.weight_version}

    @app.post("/")
    async def reward_root(self, body: RewardRequest) -> RewardResponse:
        return await self._reward(body)

    @app.post("/v1/reward")
    async def reward(self, body: RewardRequest) -> RewardResponse:
        return await self._reward(body)

    async def _reward(self, body: RewardRequest) -> RewardResponse:
        engine = self._engine()
        if body.model is not None and body.model != self.model_name:
            raise APIError(404, f"The model '{body.model}' does not exist; this server scores with "
                                f"'{self.model_name}'.", param="model", code="model_not_found")
        if len(body.input) > self.limits.max_batch:
            raise bad_request(
                f"{len(body.input)} inputs in one request; this server allows at most {self.limits.max_batch}.",
                "input",
            )
        limit = min(self.limits.max_prompt_tokens or engine.context_len, engine.context_len)
        sequences = []
        for i, item in enumerate(body.input):
            prompt, response = item.prompt_and_response()
            try:
                ids = engine.encode(prompt, response, f"input[{i}]")
            except Exception as exc:  # noqa: BLE001 - DataError from the renderer, template errors
                raise bad_request(f"input[{i}] cannot be rendered: {exc}", f"input[{i}]") from None
            if len(ids) > limit:
                raise bad_request(
                    f"input[{i}] is {len(ids)} tokens, over this reward model's limit of {limit}.",
                    f"input[{i}]",
                    code="context_length_exceeded",
                )
            sequences.append(ids)
        scores = await self._score_batch((engine, sequences))
        n_tokens = sum(len(s) for s in sequences)
        return RewardResponse(
            model=self.model_name,
            data=[RewardScore(index=i, score=s) for i, s in enumerate(scores)],
            usage=Usage(prompt_tokens=n_tokens, total_tokens=n_tokens),
            weight_version=engine.weight_version,
        )

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _score_batch(self, requests: list[tuple[RewardEngine, list[list[int]]]]) -> list[list[float]]:
        """One model call for all requests Serve gathered (sizes set from args in __init__)."""
        # a weight swap may land between requests: score each with the engine it validated against
        results: list[list[float] | None] = [None] * len(requests)
        loop = asyncio.get_running_loop()
        for engine in {id(e): e for e, _ in requests}.values():
            members = [i for i, (e, _) in enumerate(requests) if e is engine]
            flat = [seq for i in members for seq in requests[i][1]]
            scores = await loop.run_in_executor(self._executor, engine.score, flat, self.args.micro_batch)
            k = 0
            for i in members:
                m = len(requests[i][1])
                results[i] = scores[k:k + m]
                k += m
        return results


def build_app(args: dict | RewardAppArgs) -> Application:
    """Serve application builder: ``hbat.deploy.reward_app:build_app``."""
    a = args if isinstance(args, RewardAppArgs) else RewardAppArgs.model_validate(dict(args or {}))
    return RewardServer.options(**a.serve_options(), user_config=a.weights()).bind(a.model_dump(mode="json"))


__all__ = ["RewardEngine", "RewardServer", "app", "build_app"]
