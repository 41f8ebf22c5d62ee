"""``hbat build-pairs``: PopAlign's six contrast strategies on tiny random models.

Real builds (Ray rollout actors, derived models, the rule scorer): every
strategy's two sides differ in the intended way -- asserted on the prompts
and sources actually used --, every row is a valid preference record with
complete provenance, a SIGKILLed build resumes without duplicates, and bad
prompts or configs fail with exit 2 before any model loads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hbat.orchestrator.cli import main
from hbat.orchestrator.pairs import STRATEGY_NAMES
from hbat.orchestrator.pairs.strategies import ElicitiveOptions, PrefixOptions, RefineOptions

PROMPTS = [
    {"prompt": "What is 2 plus 3?", "reference": "5"},
    {"prompt": "What is the capital of France?", "reference": "Paris"},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to five."}],
     "id": "count"},
    {"prompt": "What color is grass?", "reference": "green"},
    {"prompt": "What is 4 times 2?", "reference": "8"},
]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture
def build_tree(tiny_checkpoint, tmp_path):
    def make(**top) -> dict:
        tree = {
            "name": "test",
            "prompts": _write_jsonl(tmp_path / "prompts.jsonl", PROMPTS),
            "output_dir": str(tmp_path / "pairs"),
            "batch_size": 2,
            "seed": 0,
            "models": {
                "base": {"path": tiny_checkpoint, "rank": 1},
                "noisy": {"derive": {"base": tiny_checkpoint, "noise": 0.5, "seed": 3}, "rank": 2},
                "small": {"derive": {"base": tiny_checkpoint, "keep_layers": 1}, "rank": 3},
            },
            "sampling": {"temperature": 1.0, "max_new_tokens": 6},
            "strategies": {
                "prefix": {}, "demonstration": {}, "elicitive": {},
                "parameter_count": {"larger": "base", "smaller": "small"},
                "leaderboard": {"ranking": ["base", "noisy", "small"], "pairs": "cycle"},
                "refine": {},
            },
            "scorer": {"rules": ["hbat.orchestrator.demo_data:contains_reference"]},
            "resources": {"actor_cpus": 0.25, "torch_threads": 1},
            "progress": False,
        }
        tree.update(top)
        return tree

    return make


def _config_file(tmp_path: Path, tree: dict) -> str:
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def _user(msgs: list[dict]) -> str:
    return [m for m in msgs if m["role"] == "user"][-1]["content"]


# ------------------------------------------------------------------ all six strategies, one real build
@pytest.fixture(scope="module")
def built(request, tmp_path_factory):
    """One build with every strategy (module-wide: actor start-up dominates)."""
    ray_local = request.getfixturevalue("ray_local")  # noqa: F841 - the session's Ray
    tmp = tmp_path_factory.mktemp("built")
    tiny = request.getfixturevalue("tiny_checkpoint")
    tree = {
        "prompts": _write_jsonl(tmp / "prompts.jsonl", PROMPTS), "output_dir": str(tmp / "out"), "batch_size": 2,
        "models": {"base": {"path": tiny, "rank": 1},
                   "noisy": {"derive": {"base": tiny, "noise": 0.5, "seed": 3}, "rank": 2},
                   "small": {"derive": {"base": tiny, "keep_layers": 1}, "rank": 3}},
        "sampling": {"temperature": 1.0, "max_new_tokens": 6},
        "strategies": {"prefix": {}, "demonstration": {}, "elicitive": {},
                       "parameter_count": {"larger": "base", "smaller": "small"},
                       "leaderboard": {"ranking": ["base", "noisy", "small"], "pairs": "cycle"}, "refine": {}},
        "scorer": {"rules": ["hbat.orchestrator.demo_data:contains_reference"]},
        "resources": {"actor_cpus": 0.25, "torch_threads": 1}, "progress": False,
    }
    from hbat.orchestrator.pairs import build_pairs
    from hbat.orchestrator.pairs.config import BuildPairsConfig

    summary = build_pairs(BuildPairsConfig.model_validate(tree))
    out = Path(tree["output_dir"])
    return {"summary": summary, "pairs": _read_jsonl(out / "pairs.jsonl"),
            "pointwise": _read_jsonl(out / "pointwise.jsonl"), "out": out, "tree": tree}


def _by(rows, strategy):
    got = [r for r in rows if r["strategy"] == strategy]
    assert got, f"no {strategy} pairs"
    return got


def test_rows_are_training_data_with_complete_provenance(built, tiny_tokenizer):
    from hbat.orchestrator.data import PairwiseDataset, PointwiseDataset

    rows, out = built["pairs"], built["out"]
    assert {r["strategy"] for r in rows} == set(STRATEGY_NAMES)
    # `hbat train` reads both files as they are
    assert len(PairwiseDataset.from_file(out / "pairs.jsonl", tiny_tokenizer, max_prompt_len=200, max_len=400)) \
        == len(rows)
    points = PointwiseDataset.from_file(out / "pointwise.jsonl", tiny_tokenizer, max_prompt_len=200, max_len=400)
    assert len(points) == len(built["pointwise"]) == 2 * len(rows)  # one pair per unit: two distinct responses
    originals = {json.dumps(p["prompt"]) for p in PROMPTS}
    for r in rows:
        assert json.dumps(r["prompt"]) in originals  # trained on the user's prompt, not the contrast variant
        assert r["chosen"] != r["rejected"]
        for side in ("chosen", "rejected"):
            src = r[f"{side}_source"]
            assert {"model", "model_path", "params", "variant", "input", "decoding"} <= set(src), src
            assert set(src["decoding"]) == {"temperature", "top_p", "top_k", "max_new_tokens", "seed"}
            assert src["decoding"]["max_new_tokens"] == 6 and src["params"] > 0
            assert isinstance(r[f"{side}_score"], float)
        assert r["score_gap"] == pytest.approx(r["chosen_score"] - r["rejected_score"])
        assert r["strength_gap"] == r["rejected_rank"] - r["chosen_rank"]
        assert r["level"] in ("prompt", "model", "pipeline")
    # the rule scorer ran on the real responses with the prompt's meta
    for p in built["pointwise"]:
        assert p["label"] in (0.0, 1.0) and p["source"]["model"]
    summary = built["summary"]
    assert summary["units_left"] == 0 and summary["units"] == len(PROMPTS) * 6
    assert sum(summary["pairs_total"].values()) == len(rows)


def test_prefix_contrast_uses_the_two_prefixes(built):
    d = PrefixOptions()
    for r in _by(built["pairs"], "prefix"):
        c, j = r["chosen_source"], r["rejected_source"]
        assert c["model"] == j["model"] == "base" and r["strength_gap"] == 0
        assert (c["variant"], j["variant"]) == ("good_prefix", "bad_prefix")
        assert c["input"][0]["role"] == "system" and c["input"][0]["content"].startswith(d.good)
        assert j["input"][0]["role"] == "system" and j["input"][0]["content"].startswith(d.bad)
        assert _user(c["input"]) == _user(j["input"])  # only the prefix differs


def test_demonstration_contrast_uses_good_and_bad_shots(built):
    from hbat.orchestrator.pairs.strategies import DemonstrationOptions

    d = DemonstrationOptions()
    for r in _by(built["pairs"], "demonstration"):
        c, j = r["chosen_source"]["input"], r["rejected_source"]["input"]
        shots_c = [m["content"] for m in c if m["role"] == "assistant"]
        shots_j = [m["content"] for m in j if m["role"] == "assistant"]
        assert shots_c == [x.response for x in d.good] and shots_j == [x.response for x in d.bad]
        assert c[-1] == j[-1] and c[-1]["role"] == "user"


def test_elicitive_contrast_elicits_the_chosen_side_only(built):
    d = ElicitiveOptions()
    for r in _by(built["pairs"], "elicitive"):
        c, j = r["chosen_source"], r["rejected_source"]
        question = _user(j["input"])
        assert _user(c["input"]) == d.good.format(prompt=question)
        assert j["variant"] == "direct" and question == (r["prompt"] if isinstance(r["prompt"], str)
                                                         else _user(r["prompt"]))
        assert isinstance(c["answer_marker_found"], bool)


def test_parameter_count_chosen_comes_from_the_larger_model(built):
    for r in _by(built["pairs"], "parameter_count"):
        c, j = r["chosen_source"], r["rejected_source"]
        assert (c["model"], j["model"]) == ("base", "small")
        assert c["params"] > j["params"]  # measured on the loaded models
        assert c["input"] == j["input"]  # same prompt, two models
        assert (r["chosen_rank"], r["rejected_rank"], r["strength_gap"]) == (1, 3, 2)


def test_leaderboard_chosen_is_better_ranked_and_gaps_cycle(built):
    ranking = ["base", "noisy", "small"]
    rows = _by(built["pairs"], "leaderboard")
    for r in rows:
        c, j = r["chosen_source"], r["rejected_source"]
        assert r["chosen_rank"] == ranking.index(c["model"]) + 1 < r["rejected_rank"] == ranking.index(j["model"]) + 1
        assert c["input"] == j["input"]
    by_prompt = {r["prompt_id"]: r["strength_gap"] for r in rows}
    # prompt k gets rank pair k mod 3 of (1,2), (1,3), (2,3): gaps 1, 2, 1, 1, 2
    from hbat.orchestrator.pairs.builder import load_prompts
    from hbat.orchestrator.pairs.config import BuildPairsConfig

    prompts, _ = load_prompts(BuildPairsConfig.model_validate(built["tree"]))
    assert [by_prompt[p.id] for p in prompts if p.id in by_prompt] == \
        [[1, 2, 1][p.index % 3] for p in prompts if p.id in by_prompt]
    derived = json.loads((built["out"] / "models.json").read_text())
    assert derived["noisy"]["params"] == derived["base"]["params"] > derived["small"]["params"]


def test_refine_chosen_is_the_refinement_of_the_rejected_draft(built):
    d = RefineOptions()
    for r in _by(built["pairs"], "refine"):
        c, j = r["chosen_source"], r["rejected_source"]
        assert (j["variant"], c["variant"]) == ("draft", "refined") and c["model"] == j["model"]
        question = r["prompt"] if isinstance(r["prompt"], str) else _user(r["prompt"])
        assert _user(c["input"]) == d.template.format(prompt=question, response=r["rejected"])


# ------------------------------------------------------------------ kill and resume
def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def _cli(config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "hbat.orchestrator.cli", "build-pairs", "--config", config, "--no-progress", *args]


def _journal(out: Path) -> list[dict]:
    p = out / "done.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines(keepends=True) if x.endswith("\n")]


def test_killed_build_resumes_without_duplicates(build_tree, tmp_path):
    prompts = [{"prompt": f"What is {a} plus {a + 1}?", "reference": str(2 * a + 1)} for a in range(8)]
    tree = build_tree(prompts=_write_jsonl(tmp_path / "many.jsonl", prompts), batch_size=1,
                      select=["prefix", "parameter_count", "refine"])
    config = _config_file(tmp_path, tree)
    out = Path(tree["output_dir"])
    proc = subprocess.Popen(_cli(config), env=_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while len(_journal(out)) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
    committed = len(_journal(out))
    assert 2 <= committed < len(prompts)
    # a crash while writing a batch leaves a torn row after the last commit
    with open(out / "pairs.jsonl", "a") as fh:
        fh.write('{"prompt": "What is 99 plus 1')

    rerun = subprocess.run(_cli(config), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    summary = json.loads(out.joinpath("summary.json").read_text())
    assert summary["batches_this_run"] == len(prompts) - committed  # finished prompts were not generated again
    assert summary["units_left"] == 0

    rows = _read_jsonl(out / "pairs.jsonl")  # the torn row is gone: every line parses
    keys = [(r["prompt_id"], r["strategy"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate (prompt, strategy) rows"
    done = [tuple(d) for e in _journal(out) for d in e["done"]]
    assert len(done) == len(set(done)) == len(prompts) * 3
    assert set(keys) <= set(done)
    assert len(_read_jsonl(out / "pointwise.jsonl")) == 2 * len(rows)

    again = subprocess.run(_cli(config), env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(out.joinpath("summary.json").read_text())["batches_this_run"] == 0
    assert _read_jsonl(out / "pairs.jsonl") == rows


# ------------------------------------------------------------------ validation before any model loads
@pytest.fixture
def no_models(monkeypatch):
    """Starting actors or deriving a model fails the test."""
    import hbat.orchestrator.pairs.builder as builder_mod
    import hbat.orchestrator.pairs.derive as derive_mod

    def forbid(*a, **k):
        raise AssertionError("a model was loaded before validation finished")

    monkeypatch.setattr(builder_mod.PairBuilder, "_start", forbid)
    monkeypatch.setattr(derive_mod, "derive_model", forbid)


@pytest.mark.parametrize("case,expected", [
    ("bad_prompt", ["bad.jsonl", "line 2", "'prompt'"]),
    ("duplicate_id", ["bad.jsonl", "line 3", "'id'", "duplicate id 'a'"]),
    ("no_placeholder", ["build.yaml", "strategies.elicitive.good", "{prompt}"]),
    ("unknown_strategy", ["build.yaml", "strategies.popalign: unknown key"]),
    ("undefined_model", ["strategies.parameter_count", "'huge'", "not defined under models"]),
    ("missing_model", ["models.base.path", "model not found"]),
    ("bad_rule", ["scorer.rules", "nope"]),
    ("score_label_without_scorer", ["pointwise.label", "needs scorer"]),
])
def test_bad_input_exits_2_before_models_load(no_models, build_tree, tmp_path, capsys, case, expected):
    tree = build_tree()
    if case == "bad_prompt":
        tree["prompts"] = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"prompt": 7}])
    elif case == "duplicate_id":
        tree["prompts"] = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "id": "a"}, {"prompt": "y"},
                                                                {"prompt": "z", "id": "a"}])
    elif case == "no_placeholder":
        tree["strategies"]["elicitive"] = {"good": "Think first."}
    elif case == "unknown_strategy":
        tree["strategies"]["popalign"] = {}
    elif case == "undefined_model":
        tree["strategies"]["parameter_count"] = {"larger": "huge", "smaller": "small"}
    elif case == "missing_model":
        tree["models"]["base"]["path"] = str(tmp_path / "nowhere")
    elif case == "bad_rule":
        tree["scorer"]["rules"] = ["nope.module:fn"]
    elif case == "score_label_without_scorer":
        tree["scorer"] = {}
        tree["pointwise"] = {"label": "score"}
    code = main(["build-pairs", "--config", _config_file(tmp_path, tree)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    for piece in expected:
        assert piece in err, (piece, err)
    assert not (Path(tree["output_dir"]) / "pairs.jsonl").exists()


def test_store_cuts_an_uncommitted_batch_and_a_torn_journal_line(tmp_path):
    """The commit protocol on its own: rows written after the last journal line, or under a torn journal
    line, are cut on reopening; committed rows and the done-set survive."""
    from hbat.orchestrator.pairs.store import PairStore

    store = PairStore(tmp_path)
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    store.commit({"pairs": [row], "pointwise": []}, [("p1", "prefix")], {"prefix": 1})
    committed = (tmp_path / "pairs.jsonl").read_bytes()
    with open(tmp_path / "pairs.jsonl", "a") as fh:  # a batch killed before its journal line
        fh.write(json.dumps(row) + "\n" + '{"prompt": "to')
    with open(tmp_path / "done.jsonl", "a") as fh:
        fh.write('{"done": [["p2", "prefix"]], "bytes": {"pai')
    again = PairStore(tmp_path)
    assert (tmp_path / "pairs.jsonl").read_bytes() == committed
    assert again.done == {("p1", "prefix")} and again.counts == {"prefix": 1}
    assert again.recovered_bytes > 0
    with pytest.raises(RuntimeError, match="already done"):
        again.commit({"pairs": [row]}, [("p1", "prefix")], {"prefix": 1})
    again.commit({"pairs": [row, row], "pointwise": [row]}, [("p2", "prefix")], {"prefix": 2})
    third = PairStore(tmp_path)
    assert len(_read_jsonl(tmp_path / "pairs.jsonl")) == 3 and len(_read_jsonl(tmp_path / "pointwise.jsonl")) == 1
    assert third.done == {("p1", "prefix"), ("p2", "prefix")} and third.recovered_bytes == 0
