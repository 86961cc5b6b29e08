"""Where each method's weights act and how they are normalised is part of its type; combinations are validated."""

import inspect

import pytest
import torch

from morl.components import RecipeError, build, registered
from morl.controllers import AdvantageLevel, GradientLevel, RewardLevel, WeightController, check_scalarizer
from morl.recipe import build_components, parse_recipe
from morl.stages import Need

CONTRACTS = {
    "fixed": (RewardLevel, "free"),
    "schedule": (RewardLevel, "free"),
    "ctwa": (RewardLevel, "free"),
    "lagrangian": (AdvantageLevel, "free"),
    "gdpo": (AdvantageLevel, "free"),
    "dynamic_hv": (AdvantageLevel, "free"),
    "dynamic_gradient": (GradientLevel, "simplex"),
    "pama": (GradientLevel, "simplex"),
    "mgda": (GradientLevel, "simplex"),
    "gradnorm": (GradientLevel, "sum_to_m"),
    "pcgrad": (GradientLevel, "free"),
    "cagrad": (GradientLevel, "free"),
}
FAMILIES = (RewardLevel, AdvantageLevel, GradientLevel)


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_declared_family_and_normalisation(name):
    cls = registered("controller")[name]
    family, normalization = CONTRACTS[name]
    assert issubclass(cls, family) and cls.normalization == normalization
    assert sum(issubclass(cls, f) for f in FAMILIES) == 1  # exactly one place where the weights act
    assert cls.level == {RewardLevel: "reward", AdvantageLevel: "advantage", GradientLevel: "gradient"}[family]


def test_every_registered_controller_belongs_to_a_family():
    assert set(registered("controller")) == set(CONTRACTS)
    for cls in registered("controller").values():
        assert issubclass(cls, WeightController) and any(issubclass(cls, f) for f in FAMILIES)


def test_needs_are_typed_and_weighting_below_the_reward_needs_objective_advantages():
    for name, cls in registered("controller").items():
        # a class attribute, or a property of the settings (CTWA's depend on its signal): its defaults then
        needs = cls().needs if isinstance(inspect.getattr_static(cls, "needs"), property) else cls.needs
        assert all(isinstance(need, Need) for need in needs), name
        if not issubclass(cls, RewardLevel):
            assert Need.OBJECTIVE_ADVANTAGES in needs, name


@pytest.mark.parametrize("controller", ["mgda", "lagrangian", "pama", "gdpo"])
def test_a_scalarizer_that_would_be_ignored_is_refused_naming_both(controller):
    spec = {"name": "lagrangian", "primary": "accuracy"} if controller == "lagrangian" else controller
    recipe = parse_recipe({"scalarizer": "tchebycheff", "controller": spec})
    with pytest.raises(RecipeError, match=rf"scalarizer: 'tchebycheff' would be ignored: controller '{controller}'"):
        build_components(recipe)
    build_components(parse_recipe({"controller": spec}))  # the default (linear) is fine: it is the weighted sum


def test_reward_level_controllers_take_any_scalarizer():
    for name in ("tchebycheff", "smooth_tchebycheff", "linear"):
        check_scalarizer(build("controller", "ctwa"), build("scalarizer", name))


def test_a_controller_of_no_family_is_refused_before_training():
    from morl.pipeline import check_combination

    class Loose(WeightController):
        name = ""

        def weights(self):
            return torch.ones(2)

    with pytest.raises(RecipeError, match="subclasses none of RewardLevel, AdvantageLevel, GradientLevel"):
        check_combination(
            Loose(), build("scalarizer", "linear"), build("rollout", "transformers"), build("algo", "grpo")
        )
