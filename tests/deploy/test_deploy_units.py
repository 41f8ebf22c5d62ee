"""Deploy pieces that need no running Serve: engine, sampling, errors,
settings, API keys, config files and the CLI's argument handling."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml

from hbat.deploy.sampling import (
    SamplingParams,
    adjust_logits,
    choose,
    filter_top_k_top_p,
    make_generator,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


# ---------------------------------------------------------------- engine
@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    from hbat.deploy.engine import TransformersEngine

    # one intra-op thread: a tiny model gains nothing from more, and on a busy
    # 2-core machine spinning OpenMP threads make each step 10-50x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TransformersEngine(tiny_checkpoint, dtype="float32", device="cpu")
    torch.set_num_threads(threads)


def _run(engine, prompt, **kw):
    params = SamplingParams(**kw)
    texts, finish, count = {}, {}, {}
    for events in engine.generate(engine.chat_prompt_ids([{"role": "user", "content": prompt}]), params):
        for ev in events:
            texts[ev.row] = texts.get(ev.row, "") + ev.text
            count[ev.row] = count.get(ev.row, 0) + 1
            if ev.finish_reason:
                assert ev.row not in finish, "a choice finished twice"
                finish[ev.row] = ev.finish_reason
    return [texts[r] for r in sorted(texts)], [finish[r] for r in sorted(finish)], [count[r] for r in sorted(count)]


def test_greedy_is_deterministic_and_stops_at_max_tokens(engine):
    a = _run(engine, "hello", max_tokens=7, temperature=0.0)
    b = _run(engine, "hello", max_tokens=7, temperature=0.0)
    assert a == b
    assert a[1] == ["length"] and a[2] == [7]


def test_seed_makes_sampling_reproducible(engine):
    kw = dict(max_tokens=6, temperature=1.0, n=2, seed=123)
    first = _run(engine, "the sea", **kw)
    assert _run(engine, "the sea", **kw) == first
    assert _run(engine, "the sea", **{**kw, "seed": 124})[0] != first[0]


def test_eos_bias_stops_at_once(engine):
    eos = engine.tokenizer.eos_token_id
    texts, finish, count = _run(engine, "hi", max_tokens=5, temperature=0.0, logit_bias={eos: 100.0})
    assert texts == [""] and finish == ["stop"] and count == [1]


def test_stop_string_cut_and_never_streamed(engine):
    tok = engine.tokenizer
    sea = tok(" sea", add_special_tokens=False)["input_ids"]
    assert len(sea) == 1
    forced = {sea[0]: 100.0}
    texts, _, _ = _run(engine, "hi", max_tokens=4, temperature=0.0, logit_bias=forced)
    assert texts == [" sea" * 4]
    texts, finish, _ = _run(engine, "hi", max_tokens=6, temperature=0.0, logit_bias=forced, stop=["a s"])
    assert texts == [" se"] and finish == ["stop"]
    # streaming release: no step ever hands out text past the stop string
    params = SamplingParams(max_tokens=6, temperature=0.0, logit_bias=forced, stop=["a s"])
    released = ""
    for events in engine.generate(engine.chat_prompt_ids([{"role": "user", "content": "hi"}]), params):
        released += "".join(ev.text for ev in events)
        assert "a s" not in released
    assert released == " se"


def test_context_limit_ends_with_length(engine):
    ids = engine.chat_prompt_ids([{"role": "user", "content": "hi"}])
    prompt = ids * ((engine.context_len - 3) // len(ids))
    steps = list(engine.generate(prompt, SamplingParams(max_tokens=50, temperature=0.0)))
    assert len(prompt) + len(steps) <= engine.context_len
    assert steps[-1][0].finish_reason in ("length", "stop")


def test_logprobs_are_log_probabilities(engine):
    params = SamplingParams(max_tokens=3, temperature=0.0, logprobs=True, top_logprobs=3)
    ids = engine.chat_prompt_ids([{"role": "user", "content": "hi"}])
    for events in engine.generate(ids, params):
        ev = events[0]
        tops = ev.top_logprobs
        assert len(tops) == 3 and tops[0][1] >= tops[1][1] >= tops[2][1]
        assert ev.logprob == pytest.approx(tops[0][1])  # greedy picks the top token
        assert ev.logprob <= 0


# -------------------------------------------------------------- sampling
def test_top_k_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_top_k_top_p(logits, 0, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_top_k_top_p(logits, 1, 1.0))
    assert kept.tolist() == [[True, False, False, False]]
    gen = make_generator(0, torch.device("cpu"))
    picks = {int(choose(logits, SamplingParams(temperature=1.0, top_p=0.7), gen)) for _ in range(50)}
    assert picks <= {0, 1}
    assert int(choose(logits, SamplingParams(temperature=0.0), gen)) == 0


def test_presence_and_frequency_penalties():
    logits = torch.zeros(1, 4)
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0]])
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = adjust_logits(logits, p, counts, torch.tensor([0.0, 0.0, 0.0, 2.0]))
    assert out.tolist() == [[0.0, -0.75, -1.25, 2.0]]


# ---------------------------------------------------------------- errors
def test_param_paths():
    from hbat.deploy.errors import param_path

    assert param_path(("body", "messages", 0, "role")) == "messages[0].role"
    assert param_path(("body", "messages", 0, "content", "str")) == "messages[0].content"
    assert param_path(("body", "prompt", "list[int]", 3)) == "prompt[3]"
    assert param_path(("body",)) is None


def test_validation_errors_name_the_field_the_client_meant():
    from fastapi.exceptions import RequestValidationError

    from hbat.deploy.errors import validation_error

    union = [  # "stop": 5 strings -> pydantic reports the str branch and the list branch
        {"type": "string_type", "loc": ("body", "stop", "str"), "msg": "Input should be a valid string"},
        {"type": "too_long", "loc": ("body", "stop", "list[str]"), "msg": "List should have at most 4 items"},
    ]
    e = validation_error(RequestValidationError(union))
    assert e.status == 400 and e.param == "stop" and "valid string" not in e.message
    missing = [{"type": "missing", "loc": ("body", "messages"), "msg": "Field required"}]
    e = validation_error(RequestValidationError(missing))
    assert (e.param, e.code) == ("messages", "missing_required_parameter")
    not_object = [{"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be a valid dictionary"}]
    assert validation_error(RequestValidationError(not_object)).code == "invalid_json"


# -------------------------------------------------------------- settings
def test_deployment_options():
    from pydantic import ValidationError

    from hbat.deploy.settings import PolicyAppArgs, default_model_name

    a = PolicyAppArgs(checkpoint="runs/x/final")
    assert a.serve_options()["num_replicas"] == 1 and a.served_name() == "x/final"
    auto = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2}
    opts = PolicyAppArgs(checkpoint="c", autoscaling_config=auto, ray_actor_options={"num_cpus": 0.5}).serve_options()
    assert opts["autoscaling_config"] == auto and "num_replicas" not in opts
    assert opts["ray_actor_options"] == {"num_cpus": 0.5}
    with pytest.raises(ValidationError, match="not both"):
        PolicyAppArgs(checkpoint="c", autoscaling_config=auto, num_replicas=2)
    with pytest.raises(ValidationError):
        PolicyAppArgs(checkpoint="c", autoscaling_config={"min_replicas": 3, "max_replicas": 1})
    with pytest.raises(ValidationError):
        PolicyAppArgs(checkpoint="c", limits={"max_tokenz": 5})
    assert default_model_name("smollm2-135m") == "smollm2-135m"
    assert default_model_name("/a/b/c/") == "b/c"


def test_api_keys(tmp_path, monkeypatch):
    from hbat.deploy.guard import Guard, load_api_keys

    monkeypatch.setenv("HBAT_TEST_KEY", " k1 ")
    f = tmp_path / "keys"
    f.write_text("# comment\nk2\n\nk3\n")
    keys = load_api_keys("HBAT_TEST_KEY", str(f))
    assert keys == ["k1", "k2", "k3"]
    g = Guard(api_keys=keys)
    assert g.authorized({b"authorization": b"Bearer k2"})
    assert g.authorized({b"x-api-key": b"k3"})
    assert not g.authorized({b"authorization": b"Bearer nope"})
    assert not g.authorized({})
    assert Guard().authorized({})
    monkeypatch.delenv("HBAT_TEST_KEY")
    with pytest.raises(RuntimeError, match="HBAT_TEST_KEY"):
        load_api_keys("HBAT_TEST_KEY")
    with pytest.raises(RuntimeError, match="does not exist"):
        load_api_keys(None, str(tmp_path / "missing"))


# ---------------------------------------------------------- config files
def _check_serve_config(config: dict, tiny_checkpoint: str, tiny_reward_checkpoint: str):
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    assert {a.name for a in schema.applications} == {"policy", "reward"}
    routes = {a.name: a.route_prefix for a in schema.applications}
    assert routes == {"policy": "/", "reward": "/v1/reward"}
    for app in schema.applications:
        builder = import_attr(app.import_path)
        args = dict(app.args)
        args["checkpoint"] = tiny_reward_checkpoint if app.name == "reward" else tiny_checkpoint
        if args.get("backend") == "vllm":
            args["backend"] = "transformers"  # no vLLM here; its mapping is tested below
        args.pop("api_key_env", None)
        built = call_user_app_builder_with_args_if_necessary(builder, args)
        assert isinstance(built, Application)


def test_serve_config_validates(tiny_checkpoint, tiny_reward_checkpoint):
    config = yaml.safe_load((DEPLOY / "serve_config.yaml").read_text())
    _check_serve_config(config, tiny_checkpoint, tiny_reward_checkpoint)


def test_kuberay_manifests(tiny_checkpoint, tiny_reward_checkpoint):
    docs = list(yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text()))
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every rank writes its shard into one run folder
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in pods:  # the claim at the same path everywhere
        spec = pod["template"]["spec"]
        assert {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v} \
            == {claim["metadata"]["name"]}
        assert {"name": "runs", "mountPath": "/mnt/runs"} in spec["containers"][0]["volumeMounts"]
    assert job["spec"]["entrypoint"].startswith("hbat train --config ")
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    assert any(w["maxReplicas"] > w["minReplicas"] for w in workers)
    svc = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    assert svc["kind"] == "RayService"
    _check_serve_config(yaml.safe_load(svc["spec"]["serveConfigV2"]), tiny_checkpoint, tiny_reward_checkpoint)


def test_cluster_launcher_yaml_matches_ray_schema():
    import jsonschema  # noqa: F401  (ray's dependency; the validator needs it)
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does before launching
    gpu_types = [n for n, t in config["available_node_types"].items() if "gpu" in n]
    assert gpu_types and all(config["available_node_types"][n]["max_workers"] > 0 for n in gpu_types)


# ------------------------------------------------------------ vllm mapping
def test_vllm_backend_mapping_and_guards():
    from hbat.deploy.settings import PolicyAppArgs
    from hbat.deploy.vllm_backend import (
        build_vllm_app,
        llm_config_dict,
        resolve_backend,
        vllm_installed,
    )

    a = PolicyAppArgs(
        checkpoint="org/model", model_name="m", dtype="bfloat16",
        autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
        vllm={"accelerator_type": "A10G", "engine_kwargs": {"max_model_len": 2048}},
    )
    cfg = llm_config_dict(a)
    assert cfg["model_loading_config"] == {"model_id": "m", "model_source": "org/model"}
    assert cfg["deployment_config"]["autoscaling_config"]["max_replicas"] == 4
    assert cfg["engine_kwargs"] == {"dtype": "bfloat16", "max_model_len": 2048}
    assert cfg["accelerator_type"] == "A10G"
    assert resolve_backend(PolicyAppArgs(checkpoint="c", backend="transformers")) == "transformers"
    if not vllm_installed():
        assert resolve_backend(PolicyAppArgs(checkpoint="c")) == "transformers"
        with pytest.raises(ValueError, match="hbat\\[gpu\\]"):
            resolve_backend(PolicyAppArgs(checkpoint="c", backend="vllm"))
    with pytest.raises(ValueError, match="API keys"):
        build_vllm_app(PolicyAppArgs(checkpoint="c", api_key_env="K"))


# ------------------------------------------------------------------- CLI
def _parse(argv):
    from hbat.deploy import cli

    parser = argparse.ArgumentParser(prog="hbat")
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_cli_builds_app_args(tiny_checkpoint, tiny_reward_checkpoint):
    from hbat.deploy.cli import app_specs

    ns = _parse(["--checkpoint", tiny_checkpoint, "--reward-checkpoint", tiny_reward_checkpoint,
                 "--autoscale", "1,3", "--target-ongoing-requests", "4", "--api-key-env", "K",
                 "--max-tokens", "32", "--backend", "transformers"])
    assert ns.blocking is True
    policy, reward = app_specs(ns)
    assert (policy.name, policy.route_prefix, reward.route_prefix) == ("policy", "/", "/v1/reward")
    assert policy.args["autoscaling_config"] == {
        "min_replicas": 1, "initial_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4.0}
    assert policy.args["ray_actor_options"] == {"num_cpus": 0.5}
    assert policy.args["limits"] == {"max_tokens": 32} and policy.args["api_key_env"] == "K"
    assert reward.args["checkpoint"] == tiny_reward_checkpoint
    policy.build()
    reward.build()


def test_cli_rejects_bad_input(capsys):
    from hbat.deploy.cli import run

    assert run(_parse([])) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert run(_parse(["--checkpoint", "runs/missing/final"])) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--checkpoint", "x", "--autoscale", "3,1"])
    with pytest.raises(SystemExit):
        _parse(["--checkpoint", "x", "--num-replicas", "2", "--autoscale", "1,2"])


# ------------------------------------------------------ memory per request
def test_prefill_runs_one_prompt_copy_and_keeps_last_logits(engine):
    """n choices share one prefill of the prompt, whose logits are [1, 1, vocab]; a
    [n, prompt, vocab] prefill is what made one request exhaust a replica."""
    calls = []
    real = engine.model.forward

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((tuple(kwargs["input_ids"].shape), tuple(out.logits.shape)))
        return out

    engine.model.forward = spy
    try:
        prompt = engine.chat_prompt_ids([{"role": "user", "content": "the quick brown fox " * 5}])
        steps = list(engine.generate(prompt, SamplingParams(max_tokens=3, temperature=1.0, n=4, seed=1)))
    finally:
        del engine.model.forward
    assert calls[0] == ((1, len(prompt)), (1, 1, engine.vocab_size))
    assert all(c == ((4, 1), (4, 1, engine.vocab_size)) for c in calls[1:])
    assert len(steps) <= 3 and {ev.row for ev in steps[0]} == {0, 1, 2, 3}


def test_request_memory_bound_grows_with_the_token_budget(engine):
    per_token = engine.kv_bytes_per_token()
    c = engine.model.config
    assert per_token == 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    small, big = engine.request_memory_bytes(1, 10, 10), engine.request_memory_bytes(8, 10, 10)
    assert big - small >= 7 * 20 * per_token


def test_token_budget_400_429_and_release():
    import gc

    from hbat.deploy.budget import TokenBudget
    from hbat.deploy.errors import APIError

    b = TokenBudget(per_request=100, concurrent=150)
    assert b.check(2, 30, 20, "max_tokens") == 100
    with pytest.raises(APIError) as e:
        b.check(2, 30, 21, "max_tokens")
    assert e.value.status == 400 and e.value.code == "request_tokens_exceeded" and e.value.param == "max_tokens"
    assert "2 x (30 + 21) = 102" in e.value.message and "limits.max_request_tokens" in e.value.message
    held = b.reserve(100)
    with pytest.raises(APIError) as e:
        b.reserve(60)
    assert e.value.status == 429 and "limits.max_concurrent_tokens" in e.value.message
    assert e.value.response().headers["retry-after"] == "1"
    held.release()
    held.release()  # idempotent
    assert b.in_use == 0
    with b.reserve(150):
        assert b.in_use == 150
    assert b.in_use == 0

    async def never_started():
        yield "x"

    gen = never_started()
    b.reserve(40).release_with(gen)
    assert b.in_use == 40
    del gen
    gc.collect()
    assert b.in_use == 0  # a stream the client dropped before it started gives its tokens back


def test_unexpected_exception_is_a_json_500():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from hbat.deploy.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom():
        raise KeyError("oops")

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["type"] == "server_error" and err["code"] == "internal_error" and "KeyError" in err["message"]


def test_serve_preflight_rejects_before_ray(tmp_path, monkeypatch, capsys):
    """A missing key variable, a one-slash path that does not exist, an open host without a key."""
    from hbat.deploy.cli import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HBAT_KEY_NOT_SET", raising=False)
    assert run(_parse(["--checkpoint", "smollm2-135m", "--api-key-env", "HBAT_KEY_NOT_SET"])) == 2
    assert "--api-key-env: environment variable HBAT_KEY_NOT_SET is not set" in capsys.readouterr().err
    assert run(_parse(["--checkpoint", "runs/final"])) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_relative_one_slash_path_that_exists_is_a_path(tiny_checkpoint, tmp_path, monkeypatch):
    import shutil

    from hbat.deploy.cli import app_specs

    shutil.copytree(tiny_checkpoint, tmp_path / "runs" / "final")
    monkeypatch.chdir(tmp_path)
    (spec,) = app_specs(_parse(["--checkpoint", "runs/final"]))
    assert spec.args["checkpoint"] == str(tmp_path / "runs" / "final")


def test_open_host_without_key_warns(tiny_checkpoint, caplog):
    import logging
    import socket

    from hbat.orchestrator.preflight import check_serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with caplog.at_level(logging.WARNING):
        check_serve(_parse(["--checkpoint", tiny_checkpoint, "--host", "0.0.0.0", "--port", str(port)]))
    assert "without an API key" in caplog.text
