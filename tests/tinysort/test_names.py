"""``tinysort`` names the task's data, its shipped model and a CLI group, as ``tinymath`` does."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from morl.cli import app
from morl.data import load_examples
from morl.policy import Policy
from morl.recipe import load_recipe, validate_recipe
from morl.tinysort import ANSWER_PATTERN, default_model_path, make_split

RECIPES = Path(__file__).resolve().parents[2] / "cookbook" / "recipes"


def test_data_source() -> None:
    rows = load_examples("tinysort", "eval", limit=5)
    assert rows == make_split("eval", 5, 0) == load_examples("tinysort", "eval", limit=5)
    assert len(load_examples("tinysort", "train")) == 2000
    assert rows[0]["prompt"].startswith("sort: ")


def test_policy_model() -> None:
    policy = Policy.from_pretrained("tinysort")
    assert policy.config.model == "tinysort"
    assert policy.model.config.model_type == "llama"
    assert policy.tokenizer.padding_side == "left"


@pytest.mark.parametrize("name", ["tinysort", "tinysort_linear"])
def test_recipes_validate(name: str) -> None:
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert recipe.policy.model == recipe.data.train == recipe.data.eval == "tinysort"
    assert recipe.rewards[0] == {"name": "exact_match", "pattern": ANSWER_PATTERN}  # as evaluate_styles scores
    checks = validate_recipe(recipe)[1]
    assert any("causal LM, context 256 tokens" in line for line in checks), checks
    result = CliRunner().invoke(app, ["validate", str(RECIPES / f"{name}.yaml")])
    assert result.exit_code == 0, result.output


def test_cli_build_group() -> None:
    result = CliRunner().invoke(app, ["tinysort", "build", "--help"])
    assert result.exit_code == 0 and "TinySort" in result.output
    assert default_model_path().is_dir()


def test_the_model_ships_in_the_wheel() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((RECIPES.parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["package-data"]["morl.tinysort"] == ["model/*"]
