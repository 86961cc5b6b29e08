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


OBJECTIVES = ["accuracy", "conciseness", "clarity"]


def _controller(name: str) -> WeightController:
    return build("controller", {"name": "lagrangian", "primary": "accuracy"} if name == "lagrangian" else name)


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_start_keeps_resumed_state_for_every_controller(name):
    """Starting unless resumed is the base class's job: learned state loaded before ``start`` survives it, and a
    fresh controller gets its initial state from ``start``."""
    fresh = _controller(name)
    assert not fresh.started()  # scikit-learn's rule: no learned state before start
    fresh.start(OBJECTIVES)
    if set(fresh.state_dict()) == {"objectives_"}:
        pytest.skip(f"{name} learns nothing (its weights are parameters)")
    assert fresh.started()
    saved = dict(fresh.state_dict())
    # change one learned number (a weight vector, a multiplier, a step count): a reset would put it back
    marker = next(k for k, v in saved.items() if k != "objectives_" and isinstance(v, list | int | float))
    value = saved[marker]
    saved[marker] = [0.125] * len(value) if isinstance(value, list) else value + 7
    resumed = _controller(name)
    resumed.load_state_dict(saved)
    resumed.start(OBJECTIVES)
    assert resumed.state_dict()[marker] == saved[marker]


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_every_family_weighs_a_scored_batch_without_a_trainer(name):
    """``controller.weigh`` turns rewards into the advantages the updater trains on, whatever the family, from
    tensors alone; the gradient level combines losses in the update and says so through ``loss_combiner``."""
    from morl.algos import per_objective_advantages
    from morl.stages import Scored

    controller = _controller(name)
    controller.start(OBJECTIVES)
    rewards = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    scored = Scored.from_rewards(rewards, group_size=2, objectives=OBJECTIVES)
    estimator = build("advantage", "group_norm")
    per_objective = per_objective_advantages(estimator, rewards, 2)
    weighted = controller.weigh(
        scored, scalarizer=build("scalarizer", "linear"), advantage=estimator, objective_advantages=per_objective
    )
    weights = controller.weights()
    assert weighted.advantages.shape == (4,) and torch.equal(weighted.weights, weights)
    if isinstance(controller, RewardLevel):  # scalarise, then normalise once
        expected = estimator(rewards @ weights, 2)
    elif isinstance(controller, GradientLevel):  # the weighted sum, for logging; the update combines losses
        expected = per_objective @ weights
    else:
        expected = controller.combine_advantages(per_objective, scored)
    assert torch.allclose(weighted.advantages, expected, atol=1e-6)
    assert (controller.loss_combiner() is not None) == isinstance(controller, GradientLevel)
