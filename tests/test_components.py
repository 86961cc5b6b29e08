"""Conformance checks that every registered component gets for free."""

import pytest

from morl.components import FAMILIES, Component, RecipeError, build, registered

ALL = [(family, name, cls) for family in FAMILIES for name, cls in sorted(registered(family).items())]


def _defaults_ok(cls) -> bool:
    return not any(info.is_required() for info in cls.Config.model_fields.values())


@pytest.mark.parametrize(("family", "name", "cls"), ALL, ids=[f"{f}:{n}" for f, n, _ in ALL])
def test_component_conformance(family, name, cls):
    assert issubclass(cls, Component) and cls.family == family and cls.name == name
    if not _defaults_ok(cls):
        pytest.skip("needs required parameters; covered by its own tests")
    component = build(family, name)
    assert isinstance(component, cls)
    # no learned state in __init__ (scikit-learn convention: state appears on first use)
    assert component.state_dict() == {}, f"{name} sets learned state in __init__"
    # repr echoes every parameter
    text = repr(component)
    assert text.startswith(cls.__name__ + "(")
    for key in component.get_params():
        assert f"{key}=" in text
    # clone gives an equal, independent, unstarted object
    clone = component.clone()
    assert clone is not component and clone.get_params() == component.get_params()
    # built from a dict spec with its own parameters
    assert build(family, {"name": name, **component.get_params()}).get_params() == component.get_params()


def test_unknown_component_names_allowed_values():
    with pytest.raises(RecipeError, match=r"unknown component 'ctwaa'; allowed: .*ctwa.*fixed"):
        build("controller", "ctwaa")


def test_misspelt_field_names_allowed_fields():
    with pytest.raises(RecipeError, match=r"lrr: unknown field; allowed fields: .*\blr\b"):
        build("controller", {"name": "ctwa", "lrr": 0.1})


def test_wrong_type_names_field():
    with pytest.raises(RecipeError, match=r"ema: .*"):
        build("controller", {"name": "ctwa", "ema": "fast"})


def test_import_path_component():
    assert build("reward", "tests.test_components.politeness") is politeness
    with pytest.raises(RecipeError, match="cannot import"):
        build("reward", "no_such_pkg.rewards.Thing")


def politeness(prompts, completions, **kwargs):
    return [float("please" in c) for c in completions]


def test_a_user_component_cannot_take_a_built_in_name():
    """A user reward registered as ``clarity`` would silently replace the built-in in every recipe: refused."""
    from morl.components import RecipeError, registered
    from morl.rewards import RewardFn

    builtin = registered("reward")["clarity"]
    with pytest.raises(RecipeError, match=r"reward name 'clarity' is taken by morl\.rewards\.clarity\.Clarity"):

        class MyClarity(RewardFn):
            name = "clarity"

    assert registered("reward")["clarity"] is builtin
