"""Small runs the fault, error and hang tests share: a checkpointed three-step recipe, a recipe template around one
user reward, the CLI invoked in process, and a folder's bytes."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from morl.cli import app

#: a recipe around one user reward (``{reward}``: module.name), for the tests of misbehaving rewards
REWARD_RECIPE = """
policy: {{model: {model}}}
data: {{train: tinymath, eval: null, train_size: 16}}
rewards: [conciseness, {reward}]
controller: {{name: fixed}}
rollout: {{name: transformers, max_new_tokens: 4}}
train: {{steps: {steps}, prompts_per_step: 2, group_size: 2, eval_every: 0, progress: false, threads: 1,
         save_model: false, {extra}}}
"""


def invoke_cli(*args: object) -> tuple[int, str]:
    """``morl ARGS`` in this process: its exit code and its output on one line; a traceback fails the test."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    text = " ".join(result.output.split())
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, text


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes: what "loses nothing" is checked against."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# 3 steps of 2 prompts × 2 completions, a checkpoint per step, all kept: the training settings of small resumable runs
CHECKPOINTED_TRAIN = {
    "steps": 3,
    "prompts_per_step": 2,
    "group_size": 2,
    "eval_every": 0,
    "checkpoint_every": 1,
    "keep_checkpoints": 10,
    "progress": False,
}


def checkpointed_recipe(folder: Path, model: Path | str, **train) -> Path:
    """Write ``folder/recipe.yaml``: 3 steps of 2 prompts × 2 completions, CTWA, a checkpoint per step, all kept."""
    recipe = {
        "policy": {"model": str(model)},
        "data": {"train": "tinymath", "eval": "tinymath", "train_size": 8, "eval_size": 2},
        "rewards": ["conciseness", "clarity"],
        "controller": {"name": "ctwa", "targets": [0.1, 0.1]},
        "rollout": {"name": "transformers", "max_new_tokens": 4},
        "train": {**CHECKPOINTED_TRAIN, "threads": 1, **train},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
