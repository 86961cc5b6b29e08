"""Every method recipe in the cookbook runs end to end for two steps on the tiny model."""

from pathlib import Path

import pytest

from morl.components import registered
from morl.recipe import load_data, load_recipe, pipeline_from_recipe

RECIPES = Path(__file__).resolve().parents[1] / "cookbook" / "recipes"
METHODS = [
    "tchebycheff",
    "smooth_tchebycheff",
    "lagrangian",
    "gdpo",
    "dynamic_hv",
    "dynamic_gradient",
    "pama",
    "mgda",
    "gradnorm",
    "pcgrad",
    "cagrad",
    "schedule",
]


@pytest.mark.parametrize("method", METHODS)
def test_recipe_runs_two_steps(method, tiny_model_dir, tmp_path):
    overrides = [
        "train.steps=2",
        "train.prompts_per_step=2",
        "train.group_size=2",
        "rollout.max_new_tokens=8",
        "data.eval_size=4",
        "data.train_size=8",
        f"policy.model={tiny_model_dir}",
        "train.progress=false",
        f"train.output_dir={tmp_path}",
    ]
    recipe = load_recipe(RECIPES / f"{method}.yaml", overrides)
    pipeline = pipeline_from_recipe(recipe)
    train, evals = load_data(recipe)
    result = pipeline.fit(train, evals)
    rows = [row for row in result.history if row["kind"] == "train"]
    assert len(rows) == 2 and all(f"weights/{name}" in rows[-1] for name in pipeline.objectives)


def test_every_method_is_listed():
    names = set(registered("controller")) | set(registered("scalarizer"))
    assert set(METHODS) <= names
