"""Every method recipe in the cookbook runs end to end for two steps on the tiny model."""

import math
from pathlib import Path
from typing import Any

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
    rows = [row for row in result.history_ if row["kind"] == "train"]
    assert len(rows) == 2 and all(f"weights/{name}" in rows[-1] for name in pipeline.objectives)


@pytest.mark.parametrize("recipe_name", ["gspo", "dr_grpo", "dapo"])
def test_loss_recipes_run_two_steps(recipe_name, tiny_model_dir, tmp_path):
    """GSPO, Dr. GRPO and DAPO are settings of the one policy loss (and DAPO's batch filter), not code."""
    overrides = [
        "train.steps=2",
        "train.prompts_per_step=2",
        "train.group_size=4",
        "rollout.max_new_tokens=8",
        "data.eval_size=2",
        "data.train_size=16",
        f"policy.model={tiny_model_dir}",
        "train.progress=false",
        f"train.output_dir={tmp_path}",
    ]
    recipe = load_recipe(RECIPES / f"{recipe_name}.yaml", overrides)
    result = pipeline_from_recipe(recipe).fit(*load_data(recipe))
    rows = [row for row in result.history_ if row["kind"] == "train"]
    assert len(rows) == 2 and all(math.isfinite(row["loss"]) for row in rows)
    if recipe_name == "dapo":
        assert recipe.train.dynamic_sampling and "dynamic_sampling/kept_groups" in rows[-1]


def test_every_method_is_listed():
    names = set(registered("controller")) | set(registered("scalarizer"))
    assert set(METHODS) <= names


def _on_task(recipe_file: str, task: str, tmp_path) -> Any:
    """A method recipe written on TinyMath, run small on ``task``: TinySort takes its model, data and rewards."""
    overrides = [
        "train.steps=4",
        "train.prompts_per_step=2",
        "train.group_size=4",
        "rollout.max_new_tokens=16",
        "data.eval_size=4",
        "data.train_size=16",
        "train.progress=false",
        f"train.output_dir={tmp_path}",
    ]
    if task == "tinymath":
        return load_recipe(RECIPES / recipe_file, overrides)
    sort = load_recipe(RECIPES / "tinysort.yaml")
    overrides += [f"policy.model={task}", f"data.train={task}", f"data.eval={task}"]
    return load_recipe(RECIPES / recipe_file, overrides).model_copy(update={"rewards": sort.rewards})


@pytest.mark.parametrize("task", ["tinymath", "tinysort"])
def test_ctwa_auto_is_one_file_for_both_tasks(task, tmp_path):
    """cookbook/recipes/ctwa_auto.yaml names no objective: the same controller runs on TinySort's two rewards."""
    recipe = _on_task("ctwa_auto.yaml", task, tmp_path)
    pipeline = pipeline_from_recipe(recipe)
    rows = [row for row in pipeline.fit(*load_data(recipe)).history_ if row["kind"] == "train"]
    measured = [any(math.isfinite(row[f"ctwa/cov/{o}"]) for o in pipeline.objectives) for row in rows]
    assert measured == [False, False, False, True]  # the window opened at step 1 closes at step 4


@pytest.mark.parametrize("task", ["tinymath", "tinysort"])
def test_lagrangian_auto_is_one_file_for_both_tasks(task, tmp_path):
    """cookbook/recipes/lagrangian_auto.yaml names no objective and no scale: the first reward is improved, the
    others are held at the levels measured on the first 3 batches, on either task's rewards."""
    recipe = _on_task("lagrangian_auto.yaml", task, tmp_path)
    pipeline = pipeline_from_recipe(recipe)
    rows = [row for row in pipeline.fit(*load_data(recipe)).history_ if row["kind"] == "train"]
    primary, *kept = pipeline.objectives
    assert all(row[f"weights/{primary}"] == 1.0 for row in rows)
    measured = [all(math.isfinite(row[f"lagrangian/target/{o}"]) for o in kept) for row in rows]
    assert measured == [False, False, True, True]  # levels known once the third batch is in
