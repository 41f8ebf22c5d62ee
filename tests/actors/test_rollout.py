"""Rollout actor: experience layout, sampling, weight updates, backends, Ray."""

from __future__ import annotations

import pytest
import torch

from hbat.actors.rollout import RolloutActor, RolloutWorker, build_experience, resolve_backend
from hbat.actors.rollout_hf import merged_state_dict
from hbat.actors.sampling import SamplingSettings
from hbat.models import load_causal_lm, make_tiny_checkpoint

GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=8)
TEXTS = ["the quick brown fox jumps over the lazy dog", "hello", "what is the capital of france ?"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box
    spinning thread pools cost far more than they give."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sharp_checkpoint(path, seed: int, scale: float = 20.0) -> str:
    """A tiny random Llama whose layers matter.

    At the default init scale the residual stream of a tiny tied-embedding
    model is dominated by the input embedding, so greedy decoding just echoes
    a prompt token whatever the seed; scaled-up projections make differently
    seeded checkpoints generate differently, which the weight tests rely on.
    """
    path = make_tiny_checkpoint(path, seed=seed)
    model = load_causal_lm(str(path))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(scale)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def policy_checkpoint(tmp_path_factory):
    return _sharp_checkpoint(tmp_path_factory.mktemp("rollout") / "policy", seed=0)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    return _sharp_checkpoint(tmp_path_factory.mktemp("rollout") / "other", seed=1)


@pytest.fixture(scope="module")
def worker(policy_checkpoint):
    """Shared read-only worker (tests that load weights make their own)."""
    return RolloutWorker(policy_checkpoint, backend="hf")


@pytest.fixture(scope="module")
def other_weights(other_checkpoint):
    return load_causal_lm(other_checkpoint).state_dict()


@pytest.fixture(scope="module")
def other_greedy(other_checkpoint, prompts):
    """What the other checkpoint generates greedily, loaded directly."""
    return RolloutWorker(other_checkpoint, backend="hf").generate(prompts, GREEDY).sequences


@pytest.fixture(scope="module")
def prompts(worker):
    ids = [worker.tokenizer(t)["input_ids"] for t in TEXTS]
    assert len({len(p) for p in ids}) == len(ids)  # different lengths exercise left padding
    return ids


def _responses(exp):
    """Response ids per row, read back through the shifted action mask."""
    return [exp.sequences[r, 1:][exp.action_mask[r].bool()].tolist() for r in range(len(exp))]


def _eos_biased(checkpoint: str, bonus: float) -> RolloutWorker:
    """A worker whose model emits EOS often (random tiny models almost never do)."""
    w = RolloutWorker(checkpoint, backend="hf")
    model = w.backend.model
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[w.tokenizer.eos_token_id] = bonus
    model.lm_head = head
    return w


# ---------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"n": 0}, "n"),
        ({"n": True}, "n"),
        ({"seed": -3}, "seed"),
        ({"seed": "7"}, "seed"),
    ],
)
def test_sampling_settings_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=rf"SamplingSettings\.{field}\b"):
        SamplingSettings(**kwargs)


def test_sampling_settings_defaults_and_greedy():
    s = SamplingSettings()
    assert (s.temperature, s.top_p, s.top_k, s.max_new_tokens, s.n, s.seed) == (1.0, 1.0, 0, 64, 1, None)
    assert not s.greedy and SamplingSettings(temperature=0).greedy


# ---------------------------------------------------------------------- layout
def test_build_experience_layout_exact():
    pad, eos = 0, 2
    prompts = [[5, 6, 7], [8]]
    responses = [[[11, 12, eos]], [[13], [14, 15, 16, eos]]]
    meta = [{"id": "a"}, {"id": "b"}]
    exp = build_experience(prompts, responses, pad, prompt_text=["A", "B"], meta=meta, weight_version=4)
    assert exp.sequences.tolist() == [
        [5, 6, 7, 11, 12, eos, pad],
        [pad, pad, 8, 13, pad, pad, pad],
        [pad, pad, 8, 14, 15, 16, eos],
    ]
    assert exp.attention_mask.tolist() == [
        [1, 1, 1, 1, 1, 1, 0],
        [0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 1],
    ]
    # position t scores token t+1: responses start at column 3, so masks start at 2
    assert exp.action_mask.tolist() == [
        [0, 0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 1],
    ]
    assert exp.prompt_index.tolist() == [0, 1, 1]
    assert exp.prompt_text == ["A", "B", "B"]
    assert exp.meta == [{"id": "a"}, {"id": "b"}, {"id": "b"}]
    assert exp.meta[1] is not exp.meta[2]  # rows never share a mutable dict
    assert exp.weight_version == 4
    assert exp.response_lengths.tolist() == [3, 1, 4]
    assert _responses(exp) == [r for group in responses for r in group]


def test_build_experience_rejects_mismatches():
    with pytest.raises(ValueError, match="responses"):
        build_experience([[1], [2]], [[[3]]], 0)
    with pytest.raises(ValueError, match="meta"):
        build_experience([[1]], [[[3]]], 0, meta=[{}, {}])
    with pytest.raises(ValueError, match="empty"):
        build_experience([[]], [[[3]]], 0)


def test_generate_layout_with_eos_and_padding(policy_checkpoint, prompts):
    w = _eos_biased(policy_checkpoint, bonus=5.0)
    tok = w.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=12, n=3, seed=3)
    exp = w.generate(prompts, sampling, meta=[{"i": i} for i in range(len(prompts))])

    assert len(exp) == 3 * len(prompts)
    assert exp.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [m["i"] for m in exp.meta] == exp.prompt_index.tolist()
    assert exp.prompt_text == [TEXTS[i] for i in exp.prompt_index.tolist()]
    assert exp.action_mask.shape == (len(exp), exp.sequences.shape[1] - 1)

    width = max(len(p) for p in prompts)
    responses = _responses(exp)
    for r in range(len(exp)):
        prompt = prompts[int(exp.prompt_index[r])]
        row, am = exp.sequences[r].tolist(), exp.attention_mask[r].tolist()
        resp = responses[r]
        # left-padded prompt ending at column `width`, response right after it
        assert row[width - len(prompt) : width] == prompt
        assert row[: width - len(prompt)] == [pad] * (width - len(prompt))
        assert row[width : width + len(resp)] == resp
        assert row[width + len(resp) :] == [pad] * (len(row) - width - len(resp))
        left, right = width - len(prompt), len(row) - width - len(resp)
        assert am == [0] * left + [1] * (len(prompt) + len(resp)) + [0] * right
        # EOS, when produced, is the last response token and is trained on
        assert eos not in resp[:-1]
        assert resp[-1] == eos or len(resp) == sampling.max_new_tokens
        assert exp.response_text[r] == tok.decode(resp, skip_special_tokens=True)
        assert tok.eos_token not in exp.response_text[r]
    assert any(resp[-1] == eos for resp in responses), "the EOS bonus should end some responses"
    assert len({len(r) for r in responses}) > 1, "responses of different lengths exercise right padding"


# ---------------------------------------------------------------------- sampling
def test_greedy_is_deterministic_and_matches_unbatched_generate(worker, prompts):
    exp = worker.generate(prompts, SamplingSettings(temperature=0.0, max_new_tokens=8, n=2))
    again = worker.generate(prompts, SamplingSettings(temperature=0.0, max_new_tokens=8, n=2))
    assert torch.equal(exp.sequences, again.sequences)
    responses = _responses(exp)
    model = worker.backend.model
    for i, prompt in enumerate(prompts):
        assert responses[2 * i] == responses[2 * i + 1]  # n greedy samples are identical
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
            pad_token_id=worker.tokenizer.pad_token_id, eos_token_id=worker.tokenizer.eos_token_id,
        )
        assert responses[2 * i] == out[0, len(prompt):].tolist()  # left padding changes nothing


def test_seeded_sampling_is_reproducible_and_groups_n(worker, prompts):
    s = SamplingSettings(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=8, n=4, seed=7)
    a = worker.generate(prompts, s)
    b = worker.generate(prompts, s)
    c = worker.generate(prompts, SamplingSettings(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=8, n=4, seed=8))
    assert len(a) == 4 * len(prompts)
    assert a.prompt_index.tolist() == [i for i in range(len(prompts)) for _ in range(4)]
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, c.sequences)
    responses = _responses(a)
    for i in range(len(prompts)):
        assert len({tuple(r) for r in responses[4 * i : 4 * i + 4]}) > 1  # real samples, not copies
    # the global RNG is left alone: seeding is local to the call
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    worker.generate(prompts[:1], s)
    assert torch.equal(torch.rand(3), expected)


def test_generate_text_renders_chat_and_plain(worker):
    tok = worker.tokenizer
    chat = [{"role": "user", "content": "hello"}]
    out = worker.generate_text(["hello", chat], SamplingSettings(temperature=0, max_new_tokens=6, n=2))
    assert len(out) == 2 and all(len(group) == 2 for group in out)
    assert out[0] == out[1]  # a plain string is one user message
    rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    exp = worker.generate([ids], SamplingSettings(temperature=0, max_new_tokens=6))
    assert exp.response_text[0] == out[0][0]
    with pytest.raises(ValueError, match="role"):
        worker.generate_text([[{"content": "no role"}]], GREEDY)


# ---------------------------------------------------------------------- weights
def test_update_weights_switches_model_and_rejects_stale(policy_checkpoint, other_weights, other_greedy, prompts):
    w = RolloutWorker(policy_checkpoint, backend="hf")
    before = w.generate(prompts, GREEDY)
    assert not torch.equal(before.sequences, other_greedy)

    assert w.update_weights(2, other_weights) == 2
    assert w.weight_version() == 2
    after = w.generate(prompts, GREEDY)
    assert torch.equal(after.sequences, other_greedy)
    assert after.weight_version == 2 and before.weight_version == 0

    with pytest.raises(ValueError, match="stale"):
        w.update_weights(1, other_weights)
    assert w.weight_version() == 2
    assert w.update_weights(2, other_weights) == 2  # re-sending the current version is fine


def test_update_weights_from_checkpoint_folder(policy_checkpoint, other_checkpoint, other_greedy, prompts, tmp_path):
    w = RolloutWorker(policy_checkpoint, backend="hf")
    assert w.update_weights_from_checkpoint(3, other_checkpoint) == 3
    assert torch.equal(w.generate(prompts, GREEDY).sequences, other_greedy)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        w.update_weights_from_checkpoint(4, str(tmp_path))
    with pytest.raises(ValueError, match="stale"):
        w.update_weights_from_checkpoint(2, other_checkpoint)


def test_load_weights_names_and_strictness(policy_checkpoint, other_checkpoint, other_weights, other_greedy, prompts):
    import copy

    from peft import LoraConfig, get_peft_model

    w = RolloutWorker(policy_checkpoint, backend="hf")
    target = other_greedy

    # named_parameters() of a tied model omits lm_head.weight: still complete
    params = dict(load_causal_lm(other_checkpoint).named_parameters())
    assert "lm_head.weight" not in params
    w.update_weights(1, params)
    assert torch.equal(w.generate(prompts, GREEDY).sequences, target)

    with pytest.raises(ValueError, match="do not match"):
        w.update_weights(2, {**other_weights, "model.not_a_layer.weight": torch.zeros(1)})
    partial = {k: v for k, v in other_weights.items() if "layers.1." not in k}
    with pytest.raises(ValueError, match="missing"):
        w.update_weights(2, partial)
    bad_shape = dict(other_weights)
    bad_shape["model.norm.weight"] = torch.ones(3)
    with pytest.raises(ValueError, match="shape"):
        w.update_weights(2, bad_shape)

    # a peft LoRA policy: raw adapter tensors are refused, the merged export loads
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(load_causal_lm(other_checkpoint), lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    with pytest.raises(ValueError, match="merged_state_dict"):
        w.update_weights(3, peft_model.state_dict())
    exported = merged_state_dict(peft_model)
    assert not any("lora" in k or k.startswith("base_model") for k in exported)
    w.update_weights(3, exported)
    reference = copy.deepcopy(peft_model).merge_and_unload()
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(w.backend.model.state_dict()[name], tensor)
    assert not torch.equal(w.generate(prompts, GREEDY).sequences, target)  # the adapter mattered

    # peft-wrapped names of an in-place merged model load too
    peft_model.merge_adapter()
    wrapped = {k: v for k, v in peft_model.state_dict().items() if "lora_" not in k}
    assert any(k.startswith("base_model.model.") and ".base_layer." in k for k in wrapped)
    w.update_weights(4, wrapped)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(w.backend.model.state_dict()[name], tensor)


# ---------------------------------------------------------------------- backends
def test_backend_selection_and_vllm_import_guard(monkeypatch, policy_checkpoint):
    import hbat.actors.rollout_vllm as rv

    monkeypatch.setattr(rv, "vllm_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install hbat\[gpu\]"):
        rv.VLLMBackend(policy_checkpoint)
    with pytest.raises(ImportError, match=r"pip install hbat\[gpu\]"):
        RolloutWorker(policy_checkpoint, backend="vllm")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto") == "hf"
    assert resolve_backend("hf") == "hf"
    with pytest.raises(ValueError, match="unknown generation backend"):
        resolve_backend("tgi")


def test_vllm_backend_glue_against_a_fake_vllm(monkeypatch, policy_checkpoint, other_weights):
    """The vLLM code path with a stand-in ``vllm`` module (the real one needs a GPU):
    engine arguments, sampling-parameter mapping, token-id prompts, output
    order, and the worker-extension weight push."""
    import sys
    import types

    import hbat.actors.rollout_vllm as rv

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class FakeModel:
        def __init__(self):
            self.loaded = []

        def load_weights(self, weights):
            self.loaded = [(n, t.device.type) for n, t in weights]
            return {n for n, _ in self.loaded}

    class FakeWorker(rv.HbatWorkerExtension):
        def __init__(self):
            self.model_runner = types.SimpleNamespace(model=FakeModel())
            self.device = torch.device("cpu")

    class LLM:
        def __init__(self, model, **kwargs):
            self.model, self.kwargs, self.worker, self.resets, self.params = model, kwargs, FakeWorker(), 0, []

        def generate(self, prompts, params, use_tqdm=True):
            self.params.append(params)
            # completions deliberately out of index order: the backend must sort them
            return [
                types.SimpleNamespace(outputs=[
                    types.SimpleNamespace(index=j, token_ids=[p["prompt_token_ids"][-1], 100 + j])
                    for j in reversed(range(params.n))
                ])
                for p in prompts
            ]

        def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
            return [getattr(self.worker, method)(*args, **(kwargs or {}))]

        def reset_prefix_cache(self):
            self.resets += 1

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda **kw: dict(kw)
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setattr(rv, "vllm_available", lambda: True)

    w = RolloutWorker(policy_checkpoint, backend="vllm", vllm_kwargs={"gpu_memory_utilization": 0.3})
    llm = w.backend.llm
    assert w.backend_name() == "vllm"
    assert llm.model == policy_checkpoint
    assert llm.kwargs["gpu_memory_utilization"] == 0.3
    assert llm.kwargs["worker_extension_cls"] == rv.WORKER_EXTENSION == f"{rv.__name__}.HbatWorkerExtension"

    exp = w.generate([[5, 6, 7], [8]], SamplingSettings(temperature=0.0, top_p=0.5, max_new_tokens=4, n=2, seed=9))
    p = llm.params[-1]
    assert (p.n, p.temperature, p.top_p, p.top_k, p.max_tokens, p.seed) == (2, 0.0, 1.0, 0, 4, 9)
    assert _responses(exp) == [[7, 100], [7, 101], [8, 100], [8, 101]]
    assert exp.prompt_index.tolist() == [0, 0, 1, 1]

    peft_style = {"base_model.model." + k.replace("q_proj.", "q_proj.base_layer."): v for k, v in other_weights.items()}
    assert w.update_weights(1, peft_style) == 1
    assert {n for n, _ in llm.worker.model_runner.model.loaded} == set(other_weights)
    assert llm.resets == 1  # KV blocks computed by old weights are dropped


def test_worker_info(worker):
    assert worker.backend_name() == "hf"
    assert worker.weight_version() == 0
    assert worker.set_threads(1) == 1


# ---------------------------------------------------------------------- Ray
def test_rollout_actor_through_ray(ray_local, policy_checkpoint, other_weights, other_greedy, worker, prompts):
    ray = ray_local
    actor = RolloutActor.options(num_cpus=0.25).remote(policy_checkpoint, backend="hf")
    try:
        assert ray.get(actor.backend_name.remote()) == "hf"
        first = ray.get(actor.generate.remote(prompts, GREEDY, meta=[{"k": i} for i in range(len(prompts))]))
        assert torch.equal(first.sequences, worker.generate(prompts, GREEDY).sequences)
        assert first.meta[0] == {"k": 0} and first.weight_version == 0

        ref = ray.put(other_weights)
        assert ray.get(actor.update_weights.remote(5, ref)) == 5
        after = ray.get(actor.generate.remote(prompts, GREEDY))
        assert torch.equal(after.sequences, other_greedy)
        assert after.weight_version == 5

        with pytest.raises(ValueError, match="stale"):
            ray.get(actor.update_weights.remote(4, ref))
        assert ray.get(actor.weight_version.remote()) == 5
    finally:
        ray.kill(actor)


def test_one_backend_rule_for_rollout_and_serving():
    """Rollouts and Serve resolve engines through the same rule (actors/backends.py)."""
    from hbat.actors.backends import resolve_backend as shared, vllm_installed
    from hbat.deploy.settings import PolicyAppArgs
    from hbat.deploy.vllm_backend import resolve_backend as serve

    assert shared("transformers") == shared("hf") == "hf"
    assert shared("auto", gpus=False) == "hf"
    assert shared("auto", gpus=True) == ("vllm" if vllm_installed() else "hf")
    assert serve(PolicyAppArgs(checkpoint="c", backend="auto", device="cpu")) == "transformers"
    if not vllm_installed():
        for call in (lambda: shared("vllm"), lambda: serve(PolicyAppArgs(checkpoint="c", backend="vllm"))):
            with pytest.raises(ValueError, match=r"hbat\[gpu\]"):
                call()
