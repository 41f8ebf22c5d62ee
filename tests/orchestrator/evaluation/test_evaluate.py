"""``hbat eval`` end to end on tiny random models through Ray actors."""

from __future__ import annotations

import json

import pytest
import torch

from hbat.orchestrator.evaluation import load_eval_set


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tiny_checkpoint):
    """policy (shared tiny checkpoint), another policy, a reward model with a seeded head."""
    from hbat.models import load_reward_model, load_tokenizer, make_tiny_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("eval_models")
    other = make_tiny_checkpoint(root / "other", seed=1)
    torch.manual_seed(7)
    rm = load_reward_model(str(make_tiny_checkpoint(root / "rm_base", seed=2)))
    save_checkpoint(rm, load_tokenizer(str(root / "rm_base")), root / "rm")
    return {"policy": tiny_checkpoint, "other": str(other), "rm": str(root / "rm")}


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval_data") / "eval.jsonl"
    rows = [
        {"prompt": "What is the capital of France?", "reference": "Paris"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to five."}],
         "reference": "one two three four five"},
        {"prompt": "Write a short reply without commas.", "reference": "yes",
         "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"prompt": "Say hello.", "reference": "hello"},
        {"prompt": "Why is the sky blue?", "reference": "sunlight scatters"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cfg(eval_file, **kw):
    from hbat.orchestrator.evaluation import EvalConfig

    base = dict(data=eval_file, max_new_tokens=6, batch_size=2, progress=False, n_boot=200)
    return EvalConfig(**{**base, **kw})


def test_eval_model_against_itself(ray_local, tiny_models, eval_file, tmp_path):
    """A model vs itself: KL exactly 0, every RM comparison a tie (win rate 0.5), and the
    written files hold the same numbers as the returned result."""
    from hbat.orchestrator.evaluation import evaluate_model

    m = tiny_models
    cfg = _cfg(eval_file, reward_model=m["rm"], reference=m["policy"], baseline=m["policy"],
               suites=["length", "reward", "winrate", "rouge", "ifeval", "kl"])
    res = evaluate_model(m["policy"], cfg, out_dir=tmp_path / "out")
    s = res.summary
    assert s["kl/seq"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert s["kl/logratio"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert s["winrate/rm"]["mean"] == 0.5 and s["reward/margin_vs_baseline"]["mean"] == 0.0
    assert s["length/tokens"]["n"] == 5 and s["ifeval/prompt_strict"]["n"] == 1
    assert all(n <= 6 for n in res.metrics["length/tokens"].values)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["metrics"] == json.loads(json.dumps(s))
    assert written["n_examples"] == 5 and written["suites"] == cfg.suites
    rows = [json.loads(x) for x in (tmp_path / "out" / "responses.jsonl").read_text().splitlines()]
    assert [r["response"] for r in rows] == res.responses
    assert "| winrate/rm | 0.500 |" in (tmp_path / "out" / "results.md").read_text()


def test_eval_model_scores_match_direct_computation(ray_local, tiny_models, eval_file):
    """Reward scores and KL from the actors equal an in-process computation, and a
    second run reproduces every number -- also on long-lived actors that first
    held another model and were switched to this one (what `hbat compare` does)."""
    from hbat.models import load_causal_lm, load_reward_model, load_tokenizer, reward_scores
    from hbat.orchestrator.data import SFTDataset, collate_sft
    from hbat.orchestrator.evaluation import evaluate_model
    from hbat.orchestrator.evaluation.actors import EvalActors
    from hbat.orchestrator.evaluation.generation import generate

    m = tiny_models
    cfg = _cfg(eval_file, reward_model=m["rm"], reference=m["other"], suites=["reward", "kl"])
    res = evaluate_model(m["policy"], cfg)
    actors = EvalActors(m["other"], cfg, reward=True, kl=True)
    try:
        again = evaluate_model(m["policy"], cfg, actors=actors)
        exp = generate(m["policy"], load_eval_set(eval_file), cfg, actors=actors.rollout).experiences[0]
    finally:
        actors.close()
    assert again.summary == res.summary and again.responses == res.responses

    tok = load_tokenizer(m["rm"])
    rm = load_reward_model(m["rm"])
    examples = load_eval_set(eval_file)
    expected = []
    for ex, resp in zip(examples, res.responses):
        if resp.strip():
            ds = SFTDataset.from_records([{"prompt": ex.prompt, "response": resp}], tok, max_prompt_len=1000,
                                         max_len=2000)
            b = collate_sft([ds[0]], tok.pad_token_id)
            expected.append(float(reward_scores(rm, b["input_ids"], b["attention_mask"])[0]))
        else:
            expected.append(None)
    got = res.metrics["reward/score"].values
    assert [g for g, e in zip(got, expected) if e is not None] == pytest.approx([e for e in expected if e is not None],
                                                                                 abs=1e-4)
    # KL is positive between two different random models and equals a direct evaluation
    assert all(v > 0 for v in res.metrics["kl/seq"].values)
    policy, ref = load_causal_lm(m["policy"]), load_causal_lm(m["other"])
    with torch.no_grad():
        lp_all = policy(input_ids=exp.sequences, attention_mask=exp.attention_mask).logits[:, :-1]
        lq_all = ref(input_ids=exp.sequences, attention_mask=exp.attention_mask).logits[:, :-1]
    for row in range(len(exp)):
        mask = exp.action_mask[row].bool()
        lp, lq = torch.log_softmax(lp_all[row][mask], -1), torch.log_softmax(lq_all[row][mask], -1)
        direct = float((lp.exp() * (lp - lq)).sum())
        assert res.metrics["kl/seq"].values[row] == pytest.approx(direct, rel=1e-4, abs=1e-6)


def test_eval_cli_eval_and_baseline_file(ray_local, tiny_models, eval_file, tmp_path, capsys):
    """`hbat eval` through its argparse entry: a first run writes responses.jsonl,
    a second uses them as the win-rate opponent (identical answers: 0.5)."""
    from hbat.orchestrator.evaluation.cli import main

    m = tiny_models
    common = ["--data", eval_file, "--max-new-tokens", "5", "--batch-size", "3", "--no-progress", "n_boot=100"]
    first = ["eval", "--model", m["policy"], "--out", str(tmp_path / "a"), "--suites", "length,rouge"]
    assert main(first + common) == 0
    assert main(["eval", "--model", m["policy"], "--out", str(tmp_path / "b"), "--suites", "winrate,length",
                 "--reward-model", m["rm"], "--baseline-responses", str(tmp_path / "a" / "responses.jsonl")]
                + common) == 0
    out = capsys.readouterr().out
    assert "| winrate/rm | 0.500 |" in out and "| rouge/rougeL |" in out
    # an explicitly requested suite without its input fails before any model loads
    assert main(["eval", "--model", m["policy"], "--suites", "kl"] + common) == 2
    assert "suite 'kl' cannot run: no reference model given" in capsys.readouterr().err
