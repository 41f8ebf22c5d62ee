"""Bad config and bad data fail ``hbat train`` with exit code 2 and a message
naming the key (or file, line and field) before Ray starts or any actor is
created."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import hbat.orchestrator.driver as driver_mod
from hbat.orchestrator.cli import main


class _Forbidden(Exception):
    pass


@pytest.fixture
def no_ray(monkeypatch):
    """Any attempt to start Ray or place/create actors fails the test."""
    calls: list[str] = []

    def forbid(what):
        def f(*args, **kwargs):
            calls.append(what)
            raise _Forbidden(f"{what} called before validation finished")

        return f

    monkeypatch.setattr(driver_mod.ray, "init", forbid("ray.init"))
    monkeypatch.setattr(driver_mod, "Placement", forbid("Placement"))
    monkeypatch.setattr(driver_mod.ray, "remote", forbid("ray.remote"))
    monkeypatch.setattr(driver_mod.Driver, "start", forbid("Driver.start"))
    return calls


@pytest.fixture
def config_file(make_tree, tmp_path):
    def write(tree: dict | None = None, **overrides) -> str:
        tree = tree or make_tree("hbat", "dpo", **overrides)
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(tree))
        return str(path)

    return write


def _train(capsys, config: str, *args: str) -> tuple[int, str]:
    code = main(["train", "--config", config, *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["sft.batchsize=2"], ["sft.batchsize", "unknown key"]),
        (["ppo.clip_eps=-1"], ["ppo.clip_eps", "greater than 0", "-1"]),
        (["schedule.name=hbatt"], ["schedule.name", "hbatt"]),
        (["ewc.normalize=median"], ["ewc.normalize", "median"]),
        (["ppo.advantage=grpo", "ppo.samples_per_prompt=1"], ["samples_per_prompt >= 2"]),
        (["preference_loss.loss=dpoo"], ["preference_loss.loss", "dpoo", "valid names", "ipo"]),
        (["schedule.rounds=100"], ["data.sft", "cannot be split", "rounds=100"]),
        (["preference_loss.loss=ulma"], ["ulma", "pointwise", "data.pointwise"]),
        (["sft.batch_size"], ["not of the form key=value"]),
    ],
    ids=["unknown-key", "bad-value", "bad-schedule", "bad-literal", "grpo-groups", "bad-loss", "too-few-records",
         "pointwise-without-data", "malformed-override"],
)
def test_bad_config_exits_2_before_ray(no_ray, config_file, capsys, overrides, expected):
    code, err = _train(capsys, config_file(), *overrides)
    assert code == 2, err
    assert err.startswith("error: ")
    for piece in expected:
        assert piece in err, (piece, err)
    assert no_ray == []


def test_unknown_key_in_yaml_file(no_ray, config_file, make_tree, capsys):
    tree = make_tree("hbat", "dpo")
    tree["schedul"] = {"name": "hbat"}
    tree["ppo"]["kl_coeff"] = 0.1
    code, err = _train(capsys, config_file(tree))
    assert code == 2
    assert "schedul: unknown key" in err and "ppo.kl_coeff: unknown key" in err
    assert no_ray == []


def test_resume_without_checkpoint(no_ray, config_file, capsys):
    code, err = _train(capsys, config_file(), "--resume")
    assert code == 2 and "--resume" in err and "no checkpoint" in err
    assert no_ray == []


@pytest.mark.parametrize(
    "file_key,records,line,field",
    [
        ("sft", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}, {"prompt": "e"}], 3, "response"),
        ("preference", [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": 7, "rejected": "c"}],
         2, "chosen"),
        ("pointwise", [{"prompt": "a", "response": "b", "label": "good"}], 1, "label"),
    ],
    ids=["sft-missing-field", "preference-wrong-type", "pointwise-bad-label"],
)
def test_bad_data_names_file_line_field(no_ray, config_file, make_tree, demo_files, tmp_path, capsys,
                                        file_key, records, line, field):
    good = [json.loads(x) for x in Path(demo_files[file_key]).read_text().splitlines()[:6]]
    bad = tmp_path / f"bad_{file_key}.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in records + good))
    overrides = {f"data.{file_key}": str(bad)}
    if file_key == "pointwise":
        overrides.update({"preference_loss.loss": "ulma", "data.preference": None})
    code, err = _train(capsys, config_file(make_tree("hbat", "dpo", **overrides)))
    assert code == 2, err
    assert str(bad) in err and f"line {line}" in err and repr(field) in err, err
    assert no_ray == []
