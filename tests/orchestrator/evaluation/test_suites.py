"""Each evaluation metric on hand-made cases (no Ray, no model): ROUGE on known
strings, IFEval verifiers on passing and failing responses, reward-model win
rate with known preferences, the LLM judge's position swap, the statistics."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from hbat.orchestrator.data import DataError
from hbat.orchestrator.evaluation import EvalConfig, JudgeConfig, Metric, eval_set_from_records
from hbat.orchestrator.evaluation.generation import Generations
from hbat.orchestrator.evaluation.stats import paired_seed_bootstrap, seed_bootstrap, summarize
from hbat.orchestrator.evaluation.suites import SUITES, Context, select_suites
from hbat.orchestrator.evaluation.suites.ifeval import score_ifeval
from hbat.orchestrator.evaluation.suites.judge import JudgeClient, judge_pairs, parse_verdict
from hbat.orchestrator.evaluation.suites.text import rouge_metrics


def _ctx(records, responses, baseline=None, **cfg):
    examples = eval_set_from_records(records)
    gen = Generations(list(responses), [len(r.split()) for r in responses], [False] * len(responses))
    return Context("m", examples, gen, EvalConfig(**cfg), baseline=baseline)


# ------------------------------------------------------------------ ROUGE
def test_eval_rouge_known_strings():
    ref = "the cat sat on the mat"
    m = rouge_metrics(["the cat on the mat", ref, "dogs bark loudly"], [[ref], [ref], [ref]], stemmer=False)
    # response 1: unigram overlap 5 of 5 (P=1) and of 6 (R=5/6) -> F = 10/11;
    # bigrams {the cat, on the, the mat} = 3 of 4 and of 5 -> F = 2/3; LCS "the cat on the mat" = 5 -> F = 10/11
    assert m["rouge/rouge1"].values[0] == pytest.approx(10 / 11)
    assert m["rouge/rouge2"].values[0] == pytest.approx(2 / 3)
    assert m["rouge/rougeL"].values[0] == pytest.approx(10 / 11)
    assert [m[k].values[1] for k in m] == [1.0, 1.0, 1.0]  # identical
    assert [m[k].values[2] for k in m] == [0.0, 0.0, 0.0]  # disjoint


def test_eval_rouge_best_of_several_references_and_missing():
    m = rouge_metrics(["paris", "x"], [["rome", "paris"], []])
    assert m["rouge/rougeL"].values == [1.0, None]
    assert summarize(m["rouge/rougeL"])["n"] == 1


def test_eval_rouge_stemming():
    with_stem = rouge_metrics(["cats running"], [["cat runs"]], stemmer=True)["rouge/rouge1"].values[0]
    without = rouge_metrics(["cats running"], [["cat runs"]], stemmer=False)["rouge/rouge1"].values[0]
    assert with_stem == 1.0 and without == 0.0


# ------------------------------------------------------------------ IFEval
IDS = ["punctuation:no_comma", "detectable_format:title", "startend:end_checker", "length_constraints:number_words"]
KW = [{}, {}, {"end_phrase": "Is there anything else I can help with?"}, {"relation": "less than", "num_words": 30}]
PROMPT = "Write a titled note without commas, under 30 words, ending with the phrase."


def test_eval_ifeval_pass_and_fail():
    passing = "<<A Short Note>>\nThe sun is warm today. Is there anything else I can help with?"
    failing = "Well, here is a note: the sun is warm, the sky is blue."
    m, extra = score_ifeval([PROMPT, PROMPT], [passing, failing], [IDS, IDS], [KW, KW])
    assert m["ifeval/prompt_strict"].values == [1.0, 0.0]
    assert m["ifeval/prompt_loose"].values == [1.0, 0.0]
    # the failing answer only keeps the word limit: 1 of 4 instructions
    assert m["ifeval/inst_strict"].values == [1.0, 0.25]
    # instruction level pools instructions over prompts: (4 + 1) / 8
    assert summarize(m["ifeval/inst_strict"])["mean"] == pytest.approx(5 / 8)
    assert extra["per_instruction"]["punctuation:no_comma"] == {"n": 2, "strict": 0.5, "loose": 0.5}


def test_eval_ifeval_loose_accepts_markdown_wrapping():
    # strict fails: the text ends with "**"; loose drops asterisks and passes
    resp = "<<Note>>\nAll good here. **Is there anything else I can help with?**"
    m, _ = score_ifeval([PROMPT], [resp], [IDS[1:3]], [KW[1:3]])
    assert m["ifeval/prompt_strict"].values == [0.0]
    assert m["ifeval/prompt_loose"].values == [1.0]
    assert m["ifeval/inst_strict"].values == [0.5] and m["ifeval/inst_loose"].values == [1.0]


def test_eval_ifeval_empty_response_fails_every_instruction():
    m, _ = score_ifeval([PROMPT], [""], [IDS], [KW])
    assert m["ifeval/inst_strict"].values == [0.0] and m["ifeval/inst_strict"].weights == [4.0]


def test_eval_ifeval_unknown_instruction_is_an_error():
    with pytest.raises(DataError, match="unknown IFEval instruction"):
        score_ifeval([PROMPT], ["x"], [["made_up:thing"]], [[{}]])


def test_eval_ifeval_missing_nltk_data(monkeypatch):
    import hbat.orchestrator.evaluation.suites.ifeval as mod

    monkeypatch.setattr(mod, "punkt_available", lambda: False)
    ids = ["length_constraints:number_sentences", "punctuation:no_comma"]
    kws = [{"relation": "less than", "num_sentences": 3}, {}]
    with pytest.raises(RuntimeError, match="punkt_tab"):
        score_ifeval([PROMPT], ["One. Two."], [ids], [kws])
    m, extra = score_ifeval([PROMPT], ["One. Two."], [ids], [kws], missing_data="skip")
    assert m["ifeval/inst_strict"].values == [1.0] and m["ifeval/inst_strict"].weights == [1.0]
    assert extra["skipped_instructions"] == 1


# ------------------------------------------------------------------ reward-model win rate
class KnownPreferenceRM:
    """A stand-in reward scorer whose preference is known: longer answers score higher."""

    def __init__(self):
        self.calls = 0

    def score(self, examples, responses):
        self.calls += 1
        return [float(len(r)) for r in responses]

    def close(self):
        pass


def test_eval_winrate_with_known_preferences():
    records = [{"prompt": f"q{i}"} for i in range(5)]
    mine = ["long answer", "short", "same", "a much longer answer", "tiny"]
    theirs = ["short", "long answer", "same", "brief", "small"]  # win, loss, tie, win, loss (4 vs 5 chars)
    ctx = _ctx(records, mine, baseline=theirs, reward_model="rm")
    rm = KnownPreferenceRM()
    ctx.services["reward"] = rm
    out = SUITES["winrate"].run(ctx)
    assert out["winrate/rm"].values == [1.0, 0.0, 0.5, 1.0, 0.0]
    assert summarize(out["winrate/rm"])["mean"] == pytest.approx(0.5)
    assert out["reward/margin_vs_baseline"].values == [6.0, -6.0, 0.0, 15.0, -1.0]
    scores = SUITES["reward"].run(ctx)["reward/score"].values
    assert scores == [float(len(r)) for r in mine] and rm.calls == 2  # policy scores cached across suites
    assert ctx.extra["reward_distribution"]["max"] == 20.0


def test_eval_winrate_swapped_is_complement():
    from hbat.orchestrator.evaluation.suites.reward import win_values

    a, b = [1.0, 2.0, 3.0, 3.0], [2.0, 1.0, 3.0, 0.0]
    assert [x + y for x, y in zip(win_values(a, b), win_values(b, a))] == [1.0] * 4


# ------------------------------------------------------------------ suite selection
def test_eval_suite_selection():
    recs = [{"prompt": "q", "reference": "a", "instruction_id_list": ["punctuation:no_comma"]}]
    auto = {s.name for s in select_suites("auto", _ctx(recs, ["a"]))}
    assert auto == {"length", "rouge", "ifeval"}
    auto = {s.name for s in select_suites("auto", _ctx(recs, ["a"], baseline=["b"], reward_model="rm", reference="r"))}
    assert auto == {"length", "rouge", "ifeval", "reward", "winrate", "kl"}
    with pytest.raises(ValueError, match="suite 'winrate' cannot run: no baseline"):
        select_suites(["winrate"], _ctx(recs, ["a"], reward_model="rm"))
    with pytest.raises(ValueError, match="unknown suite"):
        select_suites(["bleu"], _ctx(recs, ["a"]))
    with pytest.raises(ValueError, match="no example has a 'reference'"):
        select_suites(["rouge"], _ctx([{"prompt": "q"}], ["a"]))


def test_eval_demo_suite():
    recs = [{"prompt": "What is 7 plus 5?", "reference": "12"}, {"prompt": "What color is snow?", "reference": "white"}]
    out = SUITES["demo"].run(_ctx(recs, ["Great question! 7 plus 5 is 12.", "Snow is blue."]))
    assert out["demo/exact"].values == [1.0, 0.0] and out["demo/style"].values == [1.0, 0.0]


# ------------------------------------------------------------------ eval set validation
def test_eval_set_records_and_errors(tmp_path):
    ex = eval_set_from_records([
        {"prompt": [{"role": "user", "content": "hi"}], "reference": ["a", "b"]},
        {"prompt": "x", "response": "y", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [None]},
    ])
    assert ex[0].references == ["a", "b"] and ex[0].prompt_text == "hi"
    assert ex[1].references == ["y"] and ex[1].kwargs == [{}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": "q", "instruction_id_list": ["a"],
                                                                     "kwargs": [{}, {}]}) + "\n")
    from hbat.orchestrator.evaluation import load_eval_set

    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field 'kwargs'"):
        load_eval_set(bad)
    with pytest.raises(DataError, match=r"record 1, field 'prompt'"):
        eval_set_from_records([{"reference": "no prompt"}])


# ------------------------------------------------------------------ statistics
def test_eval_stats_bootstrap_and_weights():
    s = summarize(Metric([0.0, 1.0, 1.0, 0.0] * 10), n_boot=500)
    assert s["mean"] == 0.5 and s["ci_low"] < 0.5 < s["ci_high"] and s["n"] == 40
    w = summarize(Metric([1.0, 0.0, None], [3.0, 1.0, 5.0]))
    assert w["mean"] == 0.75 and w["n"] == 2
    same = summarize(Metric([2.0] * 5))
    assert (same["ci_low"], same["ci_high"]) == (2.0, 2.0)


def test_eval_stats_seed_bootstrap_reflects_seed_noise():
    tight = [Metric(list(np.full(20, 0.5))), Metric(list(np.full(20, 0.5)))]
    spread = [Metric(list(np.full(20, 0.2))), Metric(list(np.full(20, 0.8)))]
    t, s = seed_bootstrap(tight, 500), seed_bootstrap(spread, 500)
    assert t["mean"] == pytest.approx(0.5) and s["mean"] == pytest.approx(0.5)
    assert t["ci_high"] - t["ci_low"] == 0.0 and s["ci_high"] - s["ci_low"] == pytest.approx(0.6)
    assert s["seeds"] == pytest.approx([0.2, 0.8]) and s["seed_std"] == pytest.approx(math.sqrt(0.18))
    again = seed_bootstrap(spread, 500)
    assert again == s  # seeded: the same numbers every time


def test_eval_stats_paired_difference():
    a = [Metric([1.0, 0.0, 1.0, 1.0]), Metric([1.0, 1.0, 0.0, 1.0])]
    b = [Metric([0.0, 0.0, 1.0, 1.0]), Metric([1.0, 0.0, 0.0, 1.0])]
    d = paired_seed_bootstrap(a, b, 500)
    assert d["seed_diffs"] == [0.25, 0.25] and d["diff"] == 0.25
    assert d["ci_low"] >= 0.0 and d["ci_high"] <= 0.5
    z = paired_seed_bootstrap(a, a, 200)
    assert (z["diff"], z["ci_low"], z["ci_high"]) == (0.0, 0.0, 0.0)


# ------------------------------------------------------------------ LLM judge (local fake endpoint)
def test_eval_parse_verdict():
    assert [parse_verdict(t) for t in ["A", " b.", "[[B]]", "Tie", "I prefer B", "Response A is a bit better", "??"]] \
        == ["A", "B", "B", "tie", "B", "A", None]


class _Judge(BaseHTTPRequestHandler):
    mode = "first"  # "first": always answers A (position bias); "longer": prefers the longer response

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions" and self.headers["Authorization"] == "Bearer sk-test"
        user = body["messages"][-1]["content"]
        a = user.split("[Response A]\n", 1)[1].split("\n\n[Response B]", 1)[0]
        b = user.split("[Response B]\n", 1)[1].split("\n\nWhich response", 1)[0]
        verdict = "A" if type(self).mode == "first" else ("A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie")
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_eval_judge_position_swap(judge_server):
    cfg = JudgeConfig(url=judge_server, retries=0)
    client = JudgeClient(cfg, api_key="sk-test")
    prompts, mine, theirs = ["p1", "p2", "p3"], ["a long answer", "x", "same"], ["short", "a longer one", "same"]
    _Judge.mode = "first"
    scores, consistent, unreadable = judge_pairs(client, prompts, mine, theirs, progress=False)
    assert scores == [0.5, 0.5, 0.5] and consistent == [0.0, 0.0, 0.0] and unreadable == 0  # bias cancels
    _Judge.mode = "longer"
    scores, consistent, _ = judge_pairs(client, prompts, mine, theirs, progress=False)
    assert scores == [1.0, 0.0, 0.5] and consistent == [1.0, 1.0, 1.0]


def test_eval_judge_suite_through_context(judge_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    _Judge.mode = "longer"
    ctx = _ctx([{"prompt": "p"}, {"prompt": "q"}], ["longer answer", "a"], baseline=["short", "bb"],
               judge={"url": judge_server, "retries": 0}, progress=False)
    assert "judge" in {s.name for s in select_suites("auto", ctx)}
    out = SUITES["judge"].run(ctx)
    assert out["winrate/judge"].values == [1.0, 0.0] and ctx.extra["judge"]["unreadable_verdicts"] == 0


def test_eval_length_suite():
    examples = eval_set_from_records([{"prompt": "a"}, {"prompt": "b"}])
    gen = Generations(["one two three", ""], [4, 32], [False, True])
    out = SUITES["length"].run(Context("m", examples, gen, EvalConfig()))
    assert out["length/tokens"].values == [4.0, 32.0] and out["length/words"].values == [3.0, 0.0]
    assert out["length/truncated"].values == [0.0, 1.0]
