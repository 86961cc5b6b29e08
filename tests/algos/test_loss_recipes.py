"""The loss-axis recipes (GSPO, Dr. GRPO, DAPO) parse and build their components without a model."""

from pathlib import Path

import pytest

from morl.recipe import build_components, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "cookbook" / "recipes"


@pytest.mark.parametrize(
    ("name", "axes"),
    [
        ("gspo", {"importance_sampling_level": "sequence", "loss_type": "grpo", "clip_low": 3e-4, "clip_high": 4e-4}),
        ("dr_grpo", {"loss_type": "dr_grpo", "max_completion_length": 64}),
        ("dapo", {"loss_type": "dapo", "clip_low": 0.2, "clip_high": 0.28}),
    ],
)
def test_recipe_builds_with_its_axes(name, axes):
    components = build_components(load_recipe(RECIPES / f"{name}.yaml"))
    algo = components["algo"]
    assert algo.name == "grpo"
    assert {key: getattr(algo.config, key) for key in axes} == axes
    assert components["controller"].name == "fixed"
    if name == "dr_grpo":
        assert components["advantage"].config.scale is False  # the group-mean baseline without the std
