"""Where each method's weights act and how they are normalised is part of its type."""

import pytest

from morl.components import registered
from morl.controllers import WeightTarget

CONTRACTS = {
    "fixed": (WeightTarget.REWARD, "free"),
    "schedule": (WeightTarget.REWARD, "free"),
    "ctwa": (WeightTarget.REWARD, "free"),
    "lagrangian": (WeightTarget.ADVANTAGE, "free"),
    "gdpo": (WeightTarget.ADVANTAGE, "free"),
    "dynamic_hv": (WeightTarget.ADVANTAGE, "free"),
    "dynamic_gradient": (WeightTarget.GRADIENT, "simplex"),
    "pama": (WeightTarget.GRADIENT, "simplex"),
    "mgda": (WeightTarget.GRADIENT, "simplex"),
    "gradnorm": (WeightTarget.GRADIENT, "sum_to_m"),
    "pcgrad": (WeightTarget.GRADIENT, "free"),
    "cagrad": (WeightTarget.GRADIENT, "free"),
}


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_declared_target_and_normalisation(name):
    cls = registered("controller")[name]
    assert (cls.applies_to, cls.normalization) == CONTRACTS[name]


def test_scalarizers_act_on_rewards():
    for name in ("tchebycheff", "smooth_tchebycheff"):
        assert registered("scalarizer")[name].applies_to == WeightTarget.REWARD
