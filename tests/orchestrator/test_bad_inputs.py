"""A table of bad inputs a new user types, across ``hbat train``, ``train-rm``,
``generate``, ``eval``, ``serve`` and ``compare``: each must end with exit
code 2, one message naming the place (key, flag, file, line), no Python
traceback, and -- in-process -- without Ray ever being started.

Most rows run the real CLI's ``main()`` in this process (the same code path
as the ``hbat`` entry point, minus interpreter start-up); the rows marked
``SUB`` also run as a subprocess of ``python -m hbat.orchestrator.cli``, so
the table proves the installed command too. With ``HBAT_BAD_INPUT_TABLE=FILE``
the in-process rows append ``{case, argv, exit, message}`` lines to FILE: the
table of inputs and the message each gets.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

SUB = "sub"  # also run as a real subprocess


@dataclass
class Ctx:
    """Files a case may build on: a valid config, the demo data, the tiny models."""

    tmp: Path
    tree: dict
    policy: str
    reward: str
    demo: dict

    def config(self, tree: dict | None = None, name: str = "cfg.yaml") -> str:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(tree if tree is not None else self.tree))
        return str(path)

    def text(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def data(self, key: str, name: str, content: bytes) -> list[str]:
        """A train command whose ``data.<key>`` is a file with ``content``."""
        return ["train", "--config", self.config(), f"data.{key}={self.text(name, content)}"]

    def run_dir(self) -> Path:
        return Path(self.tree["run"]["output_dir"]) / self.tree["run"]["name"]

    def finished_run(self, summary: bool = True) -> None:
        """A run folder as a finished (or interrupted) run leaves it."""
        from hbat.orchestrator.config import dump_config, validate_config

        d = self.run_dir()
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.yaml").write_text(dump_config(validate_config(json.loads(json.dumps(self.tree)))))
        (d / "metrics.jsonl").write_text("")
        if summary:
            (d / "summary.json").write_text("{}")

    def checkpoints(self, *names: str) -> Path:
        root = self.run_dir() / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        for n in names:
            (root / n).mkdir(parents=True, exist_ok=True)
        return root

    def compare(self, **over) -> str:
        tree = {"name": "cmp", "output_dir": str(self.tmp / "cmp"), "methods": ["sft_only"], "seeds": [0],
                "include_start": False, "plots": False, "eval": {"suites": ["length"]},
                "train": json.loads(json.dumps(self.tree))}
        tree["train"]["data"]["eval_prompts"] = self.demo["eval_prompts"]
        for k, v in over.items():
            node = tree
            *parents, leaf = k.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = v
        return self.config(tree, "compare.yaml")


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode())


def _lines(n: int) -> str:
    return "".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(n))


def _busy_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    _OPEN.append(s)
    return s.getsockname()[1]


_OPEN: list[socket.socket] = []


def _train(c: Ctx, *args: str) -> list[str]:
    return ["train", "--config", c.config(), *args]


def _resume_damaged(c: Ctx) -> list[str]:
    c.finished_run(summary=False)
    root = c.checkpoints()
    (root / "latest").write_text("ckpt-000009-p000-s00009")
    return _train(c, "--resume")


def _resume_empty_state(c: Ctx) -> list[str]:
    c.finished_run(summary=False)
    root = c.checkpoints("ckpt-000002-p000-s00002")
    (root / "ckpt-000002-p000-s00002" / "state.json").write_text("")
    (root / "latest").write_text("ckpt-000002-p000-s00002")
    return _train(c, "--resume")


def _serve(*args: str) -> list[str]:
    return ["serve", *args, "--no-blocking"]


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    expect: list[str]  # pieces of stderr naming the place; "{tmp}" is the case's folder
    mode: str = "in"
    env: dict = field(default_factory=dict)


CASES = [
    # ---------------------------------------------------------- train: config
    Case("config-missing", lambda c: ["train", "--config", str(c.tmp / "nope.yaml")],
         ["config file not found", "nope.yaml"]),
    Case("yaml-syntax", lambda c: ["train", "--config", c.text("bad.yaml", "run:\n  name: [x\n")],
         ["bad.yaml, line 3", "not valid YAML"]),
    Case("yaml-tab", lambda c: ["train", "--config", c.text("tab.yaml", "run:\n\tname: x\n")],
         ["tab.yaml, line 2", "not valid YAML"]),
    Case("yaml-duplicate-section", lambda c: ["train", "--config", c.text(
        "dup.yaml", yaml.safe_dump(c.tree) + "ppo:\n  kl_coef: 0.1\n")], ["dup.yaml, line", "duplicate key 'ppo'"],
        SUB),
    Case("yaml-duplicate-key", lambda c: ["train", "--config", c.text(
        "dup2.yaml", "run:\n  name: a\n  name: b\n")], ["dup2.yaml, line 3", "duplicate key 'name'", "line 2"]),
    Case("yaml-not-mapping", lambda c: ["train", "--config", c.text("list.yaml", "- a\n- b\n")],
         ["list.yaml", "top level must be a mapping"]),
    Case("unknown-key", lambda c: _train(c, "ppo.kl_coeff=0.1"), ["ppo.kl_coeff", "unknown key"]),
    Case("override-bad-yaml", lambda c: _train(c, "sft.batch_size=[1"), ["override 'sft.batch_size=[1'"]),
    Case("override-not-key-value", lambda c: _train(c, "sft.batch_size"), ["not of the form key=value"]),
    # ---------------------------------------------------------- train: models
    Case("policy-missing-folder", lambda c: _train(c, f"model.policy={c.tmp}/no-such-model"),
         ["model.policy", "no-such-model", "does not exist"], SUB),
    Case("policy-relative-path", lambda c: _train(c, "model.policy=./models/x"), ["model.policy", "models/x"]),
    Case("policy-hub-typo-offline", lambda c: _train(c, "model.policy=HuggingFaceTB/SmolLM2-135M-Instruc"),
         ["model.policy", "HuggingFaceTB/SmolLM2-135M-Instruc", "not in the Hugging Face cache"]),
    Case("policy-invalid-id", lambda c: _train(c, "model.policy=bad id!"), ["model.policy", "'bad id!'"]),
    Case("policy-is-a-file", lambda c: _train(c, f"model.policy={c.demo['sft']}"), ["model.policy", "is a file"]),
    Case("policy-gguf-missing", lambda c: _train(c, f"model.policy={c.tmp}/m.gguf"), ["model.policy", "GGUF", "m.gguf"]),
    Case("reference-missing", lambda c: _train(c, f"model.reference={c.tmp}/ref"), ["model.reference", "ref"]),
    Case("reward-without-config-json", lambda c: _train(c, f"model.reward={c.tmp}"),
         ["model.reward", "config.json"]),
    Case("critic-missing", lambda c: _train(c, f"model.critic={c.tmp}/critic"), ["model.critic"]),
    Case("policy-env-unset", lambda c: _train(c, "model.policy=$HBAT_NO_SUCH_VAR/m"),
         ["model.policy", "HBAT_NO_SUCH_VAR", "not set"]),
    # --------------------------------------------------- train: backends, resources, lengths
    Case("vllm-not-installed", lambda c: _train(c, "rollout.backend=vllm"), ["rollout.backend=vllm", "not installed"],
         SUB),
    Case("num-cpus-over-machine", lambda c: _train(c, "resources.num_cpus=512"), ["resources.num_cpus=512", "CPUs"]),
    Case("role-cpus-over-machine", lambda c: _train(c, "resources.policy.num_cpus=64"),
         ["resources.policy.num_cpus", "64"]),
    Case("roles-sum-over-machine", lambda c: _train(c, "resources.num_cpus=1", "resources.policy.num_cpus=0.8",
                                                   "resources.reference.num_cpus=0.8"),
         ["resources", "policy.num_cpus=0.8", "reference.num_cpus=0.8"]),
    Case("gpu-on-cpu-machine", lambda c: _train(c, "resources.policy.num_gpus=1"),
         ["resources.policy.num_gpus", "GPUs", "none"]),
    Case("max-len-over-context", lambda c: _train(c, "data.max_len=100000"),
         ["data.max_len=100000", "max_position_embeddings=512"]),
    # ----------------------------------------------------------- train: data
    Case("data-missing-file", lambda c: _train(c, f"data.sft={c.tmp}/nope.jsonl"), ["data.sft", "nope.jsonl"]),
    Case("data-tilde-expands", lambda c: _train(c, "data.sft=~/hbat-no-such-dir/x.jsonl"),
         ["data.sft", str(Path.home() / "hbat-no-such-dir")]),
    Case("data-env-unset", lambda c: _train(c, "data.sft=${HBAT_NO_SUCH_DATA}/x.jsonl"),
         ["data.sft: environment variable $HBAT_NO_SUCH_DATA", "is not set"]),
    Case("gz-not-gzip", lambda c: c.data("sft", "plain.jsonl.gz", _lines(3).encode()),
         ["plain.jsonl.gz, line 1", "not a gzip file"], SUB),
    Case("gz-truncated", lambda c: c.data("sft", "cut.jsonl.gz", _gz(_lines(3000))[:2000]) + ["data.limit=null"],
         ["cut.jsonl.gz, line", "truncated"]),
    Case("bad-utf8", lambda c: c.data("sft", "latin1.jsonl", _lines(1).encode() + '{"prompt": "caf\xe9"}\n'.encode(
        "latin-1")), ["latin1.jsonl, line 2", "UTF-8"]),
    Case("invalid-json-column", lambda c: c.data("sft", "broken.jsonl", (_lines(2) + '{"prompt": "é", "response": }\n'
                                                                         ).encode()),
         ["broken.jsonl, line 3", "column 29"]),
    Case("missing-field", lambda c: c.data("sft", "nofield.jsonl", (_lines(2) + '{"prompt": "x"}\n').encode()),
         ["nofield.jsonl, line 3", "'response'"]),
    Case("pairs-all-identical", lambda c: c.data("preference", "same.jsonl", "".join(
        json.dumps({"prompt": f"q{i}", "chosen": "same", "rejected": "same"}) + "\n" for i in range(8)).encode()),
        ["same.jsonl", "'chosen' and 'rejected' are identical", "no preference signal"]),
    # ------------------------------------------------------- train: run folder
    Case("finished-run-folder", lambda c: (c.finished_run(), _train(c))[1], ["{run}", "finished run", "--overwrite"]),
    Case("unfinished-run-folder", lambda c: (c.finished_run(summary=False), _train(c))[1],
         ["{run}", "unfinished run", "--resume"]),
    Case("resume-changed-config", lambda c: (c.finished_run(summary=False), _train(c, "--resume", "ppo.kl_coef=0.5",
                                                                                      "sft.optim.lr=0.5"))[1],
         ["--resume", "ppo.kl_coef: 0.05 -> 0.5", "sft.optim.lr: 0.001 -> 0.5"]),
    Case("resume-and-overwrite", lambda c: _train(c, "--resume", "--overwrite"), ["--resume and --overwrite"]),
    Case("resume-nothing", lambda c: _train(c, "--resume"), ["--resume", "no checkpoint"]),
    Case("resume-pointer-to-missing", _resume_damaged, ["no complete checkpoint", "ckpt-000009", "missing"]),
    Case("resume-empty-state", _resume_empty_state, ["no complete checkpoint", "state.json is empty"]),
    Case("run-folder-is-file", lambda c: (c.tmp.joinpath("runs").mkdir(exist_ok=True),
                                          c.tmp.joinpath("runs", "afile").write_text("x"),
                                          _train(c, f"run.output_dir={c.tmp}/runs", "run.name=afile"))[2],
         ["afile", "is a file"]),
    Case("train-rm-bad-policy", lambda c: ["train-rm", "--config", c.config(), f"model.policy={c.tmp}/none"],
         ["model.policy"]),
    # ---------------------------------------------------------------- generate
    Case("generate-missing-model", lambda c: ["generate", "--model", f"{c.tmp}/none", "--prompt", "hi"],
         ["--model", "none", "does not exist"], SUB),
    Case("generate-one-slash-typo", lambda c: ["generate", "--model", "runs/final-typo", "--prompt", "hi"],
         ["--model", "runs/final-typo", "not in the Hugging Face cache"]),
    Case("generate-vllm", lambda c: ["generate", "--model", c.policy, "--backend", "vllm", "--prompt", "hi"],
         ["--backend=vllm", "not installed"]),
    Case("generate-zero-tokens", lambda c: ["generate", "--model", c.policy, "--max-new-tokens", "0", "--prompt", "x"],
         ["--max-new-tokens"]),
    # -------------------------------------------------------------------- eval
    Case("eval-missing-model", lambda c: ["eval", "--model", f"{c.tmp}/none", "--data", c.demo["eval_prompts"]],
         ["--model", "none"], SUB),
    Case("eval-missing-reward-model", lambda c: ["eval", "--model", c.policy, "--data", c.demo["eval_prompts"],
                                                 "--reward-model", f"{c.tmp}/rm"], ["--reward-model", "rm"]),
    Case("eval-missing-reference", lambda c: ["eval", "--model", c.policy, "--data", c.demo["eval_prompts"],
                                              "--reference", "org/not-cached"], ["--reference", "org/not-cached"]),
    Case("eval-missing-data", lambda c: ["eval", "--model", c.policy, "--data", f"{c.tmp}/e.jsonl"], ["e.jsonl"]),
    Case("eval-vllm", lambda c: ["eval", "--model", c.policy, "--data", c.demo["eval_prompts"], "--backend", "vllm"],
         ["--backend=vllm"]),
    Case("eval-config-duplicate", lambda c: ["eval", "--model", c.policy, "--config",
                                             c.text("e.yaml", "limit: 2\nlimit: 3\n")],
         ["e.yaml, line 2", "duplicate key 'limit'"]),
    Case("eval-bad-setting", lambda c: ["eval", "--model", c.policy, "--data", c.demo["eval_prompts"],
                                        "max_new_tokens=0"], ["max_new_tokens"]),
    # ------------------------------------------------------------------- serve
    Case("serve-missing-checkpoint", lambda c: _serve("--checkpoint", f"{c.tmp}/none"), ["--checkpoint", "none"], SUB),
    Case("serve-one-slash-typo", lambda c: _serve("--checkpoint", "runs/final"), ["--checkpoint", "runs/final"]),
    Case("serve-missing-reward", lambda c: _serve("--reward-checkpoint", f"{c.tmp}/rm"), ["--reward-checkpoint"]),
    Case("serve-key-env-unset", lambda c: _serve("--checkpoint", c.policy, "--api-key-env", "HBAT_NO_SUCH_KEY"),
         ["--api-key-env", "HBAT_NO_SUCH_KEY", "not set"], SUB),
    Case("serve-key-file-missing", lambda c: _serve("--checkpoint", c.policy, "--api-key-file", f"{c.tmp}/k.txt"),
         ["--api-key-file", "k.txt"]),
    Case("serve-key-file-empty", lambda c: _serve("--checkpoint", c.policy, "--api-key-file",
                                                  c.text("k.txt", "# no key\n")), ["--api-key-file", "holds no key"]),
    Case("serve-port-in-use", lambda c: _serve("--checkpoint", c.policy, "--port", str(_busy_port())),
         ["--host/--port", "cannot listen"]),
    Case("serve-budget-contradiction", lambda c: _serve("--checkpoint", c.policy, "--max-request-tokens", "100",
                                                        "--max-concurrent-tokens", "10"),
         ["max_concurrent_tokens", "max_request_tokens"]),
    Case("serve-nothing", lambda c: _serve(), ["--checkpoint"]),
    # ----------------------------------------------------------------- compare
    Case("compare-config-missing", lambda c: ["compare", "--config", f"{c.tmp}/cmp.yaml"], ["config file not found"]),
    Case("compare-bad-policy", lambda c: ["compare", "--config", c.compare(**{"train.model.policy": f"{c.tmp}/p"})],
         ["model.policy", "does not exist"], SUB),
    Case("compare-vllm", lambda c: ["compare", "--config", c.compare(**{"train.rollout.backend": "vllm"})],
         ["rollout.backend=vllm"]),
    Case("compare-eval-data-missing", lambda c: ["compare", "--config", c.compare(**{"eval.data": f"{c.tmp}/e.jsonl"})],
         ["eval.data", "e.jsonl"]),
    Case("compare-output-not-empty", lambda c: (c.tmp.joinpath("cmp").mkdir(), c.tmp.joinpath("cmp", "x").write_text(""),
                                                ["compare", "--config", c.compare()])[2],
         ["output_dir", "--resume", "--overwrite"]),
    Case("compare-resume-and-overwrite", lambda c: ["compare", "--config", c.compare(), "--resume", "--overwrite"],
         ["--resume and --overwrite"]),
    Case("compare-duplicate-key", lambda c: ["compare", "--config", c.text("c.yaml", "seeds: [0]\nseeds: [1]\n")],
         ["c.yaml, line 2", "duplicate key 'seeds'"]),
    Case("compare-sweep-unknown-key", lambda c: ["compare", "--config", c.compare(**{"sweep.ewc.strenght": [1, 10]})],
         ["sweep.ewc.strenght", "unknown key"], SUB),
    Case("compare-sweep-empty", lambda c: ["compare", "--config", c.compare(**{"sweep.ewc.strength": []})],
         ["sweep.ewc.strength", "empty list"]),
    Case("compare-sweep-bad-value", lambda c: ["compare", "--config", c.compare(**{"sweep.ewc.strength": [1, -1]})],
         ["ewc.strength", "sweep.ewc.strength=-1"]),
    Case("compare-sweep-bad-policy", lambda c: ["compare", "--config", c.compare(
        **{"sweep.model.policy": [c.policy, f"{c.tmp}/p"]})], ["model.policy", "does not exist"]),
    Case("compare-sweep-baseline", lambda c: ["compare", "--config", c.compare(
        **{"methods": ["sft_only", "hbat-dpo"], "baseline": "hbat-dpo", "sweep.ewc.strength": [1, 10]})],
         ["baseline 'hbat-dpo' runs once per sweep setting", "hbat-dpo[ewc.strength=10]"]),
]


@pytest.fixture
def ctx(make_tree, tiny_checkpoint, tiny_reward_checkpoint, demo_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree = make_tree("hbat", "ppo", **{"ppo.kl_coef": 0.05})
    return Ctx(tmp_path, tree, tiny_checkpoint, tiny_reward_checkpoint, demo_files)


@pytest.fixture
def no_ray(monkeypatch):
    """Starting Ray, Serve or a placement group fails the test: every check comes first."""
    import ray
    from ray import serve

    started: list[str] = []

    def forbid(what):
        def f(*a, **k):
            started.append(what)
            raise AssertionError(f"{what} called before the input was checked")
        return f

    monkeypatch.setattr(ray, "init", forbid("ray.init"))
    monkeypatch.setattr(serve, "start", forbid("serve.start"))
    monkeypatch.setattr("hbat.orchestrator.placement.placement_group", forbid("placement_group"))
    return started


def _expected(case: Case, c: Ctx) -> list[str]:
    return [e.replace("{run}", str(c.run_dir())).replace("{tmp}", str(c.tmp)) for e in case.expect]


def _check(case: Case, c: Ctx, code: int, err: str) -> None:
    assert code == 2, f"{case.id}: exit {code}\n{err}"
    assert "Traceback" not in err, f"{case.id}: traceback\n{err}"
    assert "<unicode string>" not in err, f"{case.id}: PyYAML's placeholder instead of the file\n{err}"
    for piece in _expected(case, c):
        assert piece in err, f"{case.id}: {piece!r} not in\n{err}"


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    from hbat.orchestrator.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_in_process(case, ctx, no_ray, capsys, monkeypatch):
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    argv = case.argv(ctx)
    code, err = run_in_process(argv, capsys)
    table = os.environ.get("HBAT_BAD_INPUT_TABLE")  # write the input -> message table for the docs
    if table:
        shown = " ".join(a.replace(str(ctx.tmp), "$TMP") for a in argv)
        msg = err.strip().splitlines()[-1] if err.strip() else ""
        with open(table, "a") as fh:
            fh.write(json.dumps({"case": case.id, "argv": shown, "exit": code,
                                 "message": msg.replace(str(ctx.tmp), "$TMP")}) + "\n")
    _check(case, ctx, code, err)
    assert no_ray == []


SUBPROCESS = [c for c in CASES if c.mode == SUB]


@pytest.mark.parametrize("case", SUBPROCESS, ids=[c.id for c in SUBPROCESS])
def test_bad_input_subprocess(case, ctx):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **case.env)
    done = subprocess.run([sys.executable, "-m", "hbat.orchestrator.cli", *case.argv(ctx)], capture_output=True,
                          text=True, env=env, cwd=ctx.tmp, timeout=120)
    _check(case, ctx, done.returncode, done.stderr)
    assert "Started a local Ray instance" not in done.stderr


def test_table_is_large_enough():
    assert len(CASES) >= 40 and len(SUBPROCESS) >= 6
    assert {c.argv(None)[0] if c.id.startswith("serve-nothing") else c.id.split("-")[0] for c in CASES} >= {
        "generate", "eval", "serve", "compare"}
