"""A three-step recipe on the tiny model with a checkpoint every step: what the fault and error tests damage."""

from __future__ import annotations

from pathlib import Path

import yaml


def checkpointed_recipe(folder: Path, model: Path | str, **train) -> Path:
    """Write ``folder/recipe.yaml``: 3 steps of 2 prompts × 2 completions, CTWA, a checkpoint per step, all kept."""
    recipe = {
        "policy": {"model": str(model)},
        "data": {"train": "tinymath", "eval": "tinymath", "train_size": 8, "eval_size": 2},
        "rewards": ["conciseness", "clarity"],
        "controller": {"name": "ctwa", "targets": [0.1, 0.1]},
        "rollout": {"name": "transformers", "max_new_tokens": 4},
        "train": {
            "steps": 3,
            "prompts_per_step": 2,
            "group_size": 2,
            "eval_every": 0,
            "checkpoint_every": 1,
            "keep_checkpoints": 10,
            "threads": 1,
            "progress": False,
            **train,
        },
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
