"""Weight controllers: own the weights λ and update them from batch statistics."""

from morl.controllers.base import WeightController, WeightTarget, per_objective
from morl.controllers.ctwa import CTWA, group_covariances
from morl.controllers.fixed import FixedWeights

__all__ = ["CTWA", "FixedWeights", "WeightController", "WeightTarget", "group_covariances", "per_objective"]
