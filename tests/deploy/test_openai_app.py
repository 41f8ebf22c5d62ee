"""End to end on loopback: ``hbat serve`` (the CLI's run) starts Serve with a
tiny policy and a tiny reward model behind an API key; the official
``openai`` client and raw HTTP talk to it."""

from __future__ import annotations

import json

import pytest

# the `dev` extra installs both: a missing one must fail, not skip
import httpx
import openai

KEY = "sk-hbat-test-key"
MODEL = "tiny-policy"


@pytest.fixture(scope="module")
def server(ray_local, tiny_checkpoint, tiny_reward_checkpoint, tmp_path_factory):
    import socket

    from ray import serve

    from hbat.deploy import cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# test keys\n" + KEY + "\n")
    parser = _parser(cli)
    args = parser.parse_args([
        "serve", "--checkpoint", tiny_checkpoint, "--reward-checkpoint", tiny_reward_checkpoint,
        "--model-name", MODEL, "--reward-model-name", "tiny-rm", "--weight-version", "1",
        "--host", "127.0.0.1", "--port", str(port), "--api-key-file", str(key_file),
        "--replica-cpus", "0.25", "--max-tokens", "64", "--max-batch", "8", "--max-body-bytes", "65536",
        "--max-request-tokens", "400", "--max-concurrent-tokens", "600",
        "--no-blocking",
    ])
    assert cli.run(args) == 0
    base = f"http://127.0.0.1:{port}"
    yield base
    serve.shutdown()


def _parser(cli):
    import argparse

    parser = argparse.ArgumentParser(prog="hbat")
    cli.register(parser.add_subparsers(dest="command"))
    return parser


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


# ------------------------------------------------------------- openai client
def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra["weight_version"] == 1
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion(client):
    msgs = [{"role": "system", "content": "be short"}, {"role": "user", "content": "hello there"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.system_fingerprint == "hbat-v1"
    again = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == choice.message.content  # greedy is deterministic


def test_chat_sampling_params(client):
    msgs = [{"role": "user", "content": "count to five"}]
    kw = dict(model=MODEL, messages=msgs, max_tokens=6, temperature=0.9, top_p=0.8, seed=7,
              n=3, presence_penalty=0.5, frequency_penalty=0.5, logprobs=True, top_logprobs=2)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert len(a.choices) == 3 and [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # seeded
    lp = a.choices[0].logprobs.content
    assert lp and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in lp)


def test_chat_stream(client):
    msgs = [{"role": "user", "content": "write a poem about the sea"}]
    full = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="the quick brown fox", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and len(r.choices) == 1 and r.usage.completion_tokens <= 5
    multi = client.completions.create(model=MODEL, prompt=["one two", "the sea"], max_tokens=4, n=2,
                                      temperature=0, logprobs=1)
    assert [c.index for c in multi.choices] == [0, 1, 2, 3]
    assert all(len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) for c in multi.choices)
    echo = client.completions.create(model=MODEL, prompt="hello", max_tokens=3, temperature=0, echo=True)
    assert echo.choices[0].text.startswith("hello")
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="the quick brown fox", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_stop_string_is_honoured(client, tiny_checkpoint):
    """End-of-turn tokens are banned with ``logit_bias`` so the greedy answer
    always runs to ``max_tokens``: a stop string can then be picked from its
    middle, whatever the tiny random model happens to say."""
    from hbat.models import load_tokenizer

    tok = load_tokenizer(tiny_checkpoint)
    ends = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} - {None, tok.unk_token_id}
    ban = {str(t): -100 for t in ends}
    msgs = [{"role": "user", "content": "hello"}]
    kw = dict(model=MODEL, messages=msgs, max_tokens=12, temperature=0, logit_bias=ban)
    full = client.chat.completions.create(**kw)
    text = full.choices[0].message.content
    assert full.choices[0].finish_reason == "length" and len(text) >= 6, text
    stop = text[2:4]
    cut = client.chat.completions.create(**kw, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        **kw, stop=[stop], stream=True) if c.choices)
    assert streamed == cut.choices[0].message.content


# -------------------------------------------------------------------- reward
def test_reward_pairs_and_messages(http):
    body = {"input": [
        {"prompt": "what is the capital of france ?", "response": "paris is the capital of france ."},
        {"prompt": "what is the capital of france ?", "response": "no"},
        {"messages": [{"role": "user", "content": "what is the capital of france ?"},
                      {"role": "assistant", "content": "paris is the capital of france ."}]},
    ]}
    r = http.post("/v1/reward", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "tiny-rm" and out["weight_version"] == 1
    scores = [d["score"] for d in out["data"]]
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert scores[0] == pytest.approx(scores[2], abs=1e-5)  # same conversation, two spellings
    assert out["usage"]["prompt_tokens"] > 0


def test_reward_matches_offline_scoring(http, tiny_reward_checkpoint):
    """The served score equals the trainer-side rendering + reward_scores."""
    import torch

    from hbat.models import load_reward_model, load_tokenizer, reward_scores
    from hbat.orchestrator.data import Renderer, encode_pieces

    tok = load_tokenizer(tiny_reward_checkpoint)
    model = load_reward_model(tiny_reward_checkpoint)
    ids = encode_pieces(tok, [Renderer(tok).pair_pieces("count to five", "one two three four five")])[0][0]
    expected = float(reward_scores(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0])
    r = http.post("/v1/reward", json={"input": [{"prompt": "count to five", "response": "one two three four five"}]})
    assert r.json()["data"][0]["score"] == pytest.approx(expected, abs=1e-4)


def test_reward_batches_concurrent_requests(http, server):
    import concurrent.futures as cf

    def one(i):
        return http.post("/v1/reward", json={"input": [{"prompt": f"say {i}", "response": "yes"}]}).status_code

    with cf.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(16))) == [200] * 16


def test_reward_bad_requests(http):
    e = _error(http.post("/v1/reward", json={"input": [{"prompt": "hi"}]}), 400)
    assert e["param"] == "input[0]" and "response" in e["message"]
    e = _error(http.post("/v1/reward", json={"input": []}), 400)
    assert e["param"] == "input"
    e = _error(http.post("/v1/reward", json={"input": [{"prompt": "a", "response": "b"}] * 9}), 400)
    assert e["param"] == "input" and "at most 8" in e["message"]
    e = _error(http.post("/v1/reward", json={"input": [{"messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}]}), 400)
    assert "assistant" in e["message"]
    e = _error(http.post("/v1/reward", json={"input": [{"prompt": "a " * 600, "response": "b"}]}), 400)
    assert e["code"] == "context_length_exceeded" and e["param"] == "input[0]"


# -------------------------------------------------------------- bad requests
def _chat(http, body, raw: bool = False):
    content = body if raw else json.dumps(body)
    return http.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})


GOOD = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def test_malformed_json(http):
    e = _error(_chat(http, '{"model": "x", "messages": [', raw=True), 400)
    assert e["code"] == "invalid_json" and e["type"] == "invalid_request_error"
    e = _error(_chat(http, "", raw=True), 400)
    assert e["code"] == "invalid_json"


def test_missing_fields(http):
    e = _error(_chat(http, {"model": MODEL}), 400)
    assert e["param"] == "messages" and "required" in e["message"]
    e = _error(_chat(http, {"messages": GOOD["messages"]}), 400)
    assert e["param"] == "model"
    e = _error(http.post("/v1/completions", json={"model": MODEL}), 400)
    assert e["param"] == "prompt"


def test_wrong_types(http):
    for field, value, param in [
        ("messages", "hi", "messages"),
        ("max_tokens", "5", "max_tokens"),
        ("max_tokens", True, "max_tokens"),
        ("temperature", "hot", "temperature"),
        ("temperature", 3.5, "temperature"),
        ("n", 0, "n"),
        ("stream", "yes", "stream"),
        ("messages", [{"role": "robot", "content": "x"}], "messages[0].role"),
        ("messages", [{"role": "user", "content": 5}], "messages[0].content"),
    ]:
        e = _error(_chat(http, {**GOOD, field: value}), 400)
        assert e["param"] == param, (field, value, e)
    e = _error(_chat(http, ["not", "an", "object"]), 400)
    assert e["type"] == "invalid_request_error"


def test_limits(http):
    e = _error(_chat(http, {**GOOD, "max_tokens": 65}), 400)
    assert e["param"] == "max_tokens" and "64" in e["message"]
    e = _error(_chat(http, {**GOOD, "max_completion_tokens": 1000}), 400)
    assert e["param"] == "max_completion_tokens"
    e = _error(_chat(http, {**GOOD, "n": 9}), 400)
    assert e["param"] == "n"
    long_prompt = {**GOOD, "messages": [{"role": "user", "content": "the sea " * 400}]}
    e = _error(_chat(http, long_prompt), 400)
    assert e["code"] == "context_length_exceeded" and e["param"] == "messages"
    e = _error(http.post("/v1/completions", json={"model": MODEL, "prompt": [[1, 2, 99999]]}), 400)
    assert e["param"] == "prompt" and "vocabulary" in e["message"]
    e = _error(_chat(http, {**GOOD, "logit_bias": {"abc": 1}}), 400)
    assert e["param"] == "logit_bias"
    e = _error(_chat(http, {**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}]}), 400)
    assert e["param"] == "tools"


def test_body_too_large(http):
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * 70_000}]}
    e = _error(_chat(http, big), 413)
    assert e["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        data = json.dumps(big).encode()
        for i in range(0, len(data), 8192):
            yield data[i:i + 8192]

    r = http.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    _error(r, 413)


def test_unknown_model_route_and_method(http):
    e = _error(_chat(http, {**GOOD, "model": "gpt-4"}), 404)
    assert e["code"] == "model_not_found" and e["param"] == "model"
    _error(http.get("/v1/nothing"), 404)
    _error(http.get("/v1/chat/completions"), 405)


def test_api_key_required(server):
    with httpx.Client(base_url=server, timeout=30) as anon:
        e = _error(anon.post("/v1/chat/completions", json=GOOD), 401)
        assert e["code"] == "invalid_api_key" and "Missing" in e["message"]
        _error(anon.get("/v1/models"), 401)
        _error(anon.post("/v1/reward", json={"input": [{"prompt": "a", "response": "b"}]}), 401)
        e = _error(anon.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert "Incorrect" in e["message"]
        assert anon.get("/health").status_code == 200  # health checks need no key
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_reconfigure_swaps_weights(http, client, tiny_checkpoint, tmp_path_factory):
    """A user_config change (what a new replica or `serve deploy` triggers) loads
    another checkpoint/version in place; the model id stays."""
    from ray import serve

    from hbat.models import make_tiny_checkpoint

    other = str(make_tiny_checkpoint(tmp_path_factory.mktemp("v2") / "policy", seed=1))
    handle = serve.get_app_handle("policy")
    msgs = [{"role": "user", "content": "hello"}]
    kw = dict(model=MODEL, messages=msgs, max_tokens=4, temperature=0, logprobs=True)
    before = client.chat.completions.create(**kw)
    handle.reconfigure.remote({"checkpoint": other, "weight_version": 2}).result(timeout_s=60)
    card = client.models.retrieve(MODEL)
    assert card.model_extra["weight_version"] == 2 and card.model_extra["root"] == other
    after = client.chat.completions.create(**kw)
    assert after.system_fingerprint == "hbat-v2"
    first = [r.choices[0].logprobs.content[0].logprob for r in (before, after)]
    assert first[0] != pytest.approx(first[1], abs=1e-6)  # other weights, other distribution
    handle.reconfigure.remote({"checkpoint": tiny_checkpoint, "weight_version": 1}).result(timeout_s=60)


def _budget_request(max_tokens: int = 45, **kw) -> dict:
    # 5 prompt tokens: n x (prompt + max_tokens) = 8 x 50 = 400, the server's per-request limit
    return {"model": MODEL, "prompt": [1, 2, 3, 4, 5], "n": 8, "max_tokens": max_tokens, "temperature": 1.0, **kw}


def test_token_budget_per_request_is_400(http):
    e = _error(http.post("/v1/completions", json=_budget_request(46)), 400)
    assert e["code"] == "request_tokens_exceeded" and e["param"] == "max_tokens"
    assert "8 x (5 + 46) = 408" in e["message"] and "400" in e["message"]
    assert http.post("/v1/completions", json=_budget_request(45)).status_code == 200  # exactly at the limit
    # a chat without max_tokens gets the default shrunk to what the budget allows, not a 400
    r = _chat(http, {**GOOD, "n": 8, "temperature": 1.0, "logit_bias": {}})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["completion_tokens"] <= 8 * (400 // 8 - usage["prompt_tokens"])


def test_token_budget_across_requests_is_429_and_released(http):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: http.post("/v1/completions", json=_budget_request()), range(6)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 429}, codes  # 2 x 400 tokens never fit in 600 at once
    busy = _error(next(r for r in answers if r.status_code == 429), 429)
    assert busy["code"] == "token_budget_exhausted" and "limits.max_concurrent_tokens" in busy["message"]
    # streams give their tokens back too: after one, two more full-size requests run one by one
    with http.stream("POST", "/v1/completions", json=_budget_request(stream=True)) as r:
        assert r.status_code == 200 and "[DONE]" in "".join(r.iter_text())
    for _ in range(2):
        assert http.post("/v1/completions", json=_budget_request()).status_code == 200
