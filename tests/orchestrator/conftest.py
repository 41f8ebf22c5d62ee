"""Fixtures for the driver tests: a builder for small, fast run configs on the tiny random checkpoints."""

from __future__ import annotations

import copy

import pytest


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


@pytest.fixture
def make_tree(tiny_checkpoint, tiny_reward_checkpoint, demo_files, tmp_path):
    """``make_tree(schedule, preference, **{"dotted.key": value})`` -> config dict.

    Sized for seconds per run: 8 records per file, 2 rounds, 1-2 steps per
    phase, 4 new tokens. PPO gets the tiny reward model unless
    ``model.reward=None`` asks the run to train one first.
    """

    def build(schedule: str = "hbat", preference: str = "dpo", name: str | None = None, **overrides) -> dict:
        tree = {
            "run": {"name": name or f"{schedule}-{preference}", "output_dir": str(tmp_path / "runs"), "seed": 0},
            "model": {"policy": tiny_checkpoint, "reward": tiny_reward_checkpoint if preference == "ppo" else None},
            "data": {
                "sft": demo_files["sft"],
                "preference": demo_files["preference"],
                "prompts": demo_files["prompts"],
                "max_prompt_len": 48,
                "max_len": 128,
                "limit": 8,
            },
            "resources": {"torch_threads": 1},
            "schedule": {"name": schedule, "preference": preference, "rounds": 2},
            "sft": {"batch_size": 2, "steps_per_phase": 2, "optim": {"lr": 1e-3}},
            "preference_loss": {"batch_size": 2, "steps_per_phase": 2, "optim": {"lr": 1e-3}},
            "ppo": {
                "prompts_per_step": 2,
                "samples_per_prompt": 2,
                "steps_per_phase": 1,
                "max_new_tokens": 4,
                "mini_batch_size": 4,
                "optim": {"lr": 1e-3},
            },
            "reward_model": {"batch_size": 2, "max_steps": 1},
            "ewc": {"method": "modified", "strength": 10.0},
            "logging": {"tensorboard": False, "progress": False},
        }
        for key, value in overrides.items():
            _set(tree, key, copy.deepcopy(value))
        return tree

    return build
