"""Weight controllers: own the weights λ and update them from batch statistics."""

from morl.controllers.base import (
    AdvantageLevel,
    GradientLevel,
    RewardLevel,
    UsesValidation,
    WeightController,
    check_scalarizer,
    per_objective,
)
from morl.controllers.cagrad import CAGrad
from morl.controllers.ctwa import CTWA
from morl.controllers.dynamic import GradientWeighting, HypervolumeWeighting
from morl.controllers.fixed import FixedWeights
from morl.controllers.gdpo import GDPO
from morl.controllers.gradients import GramWeighting
from morl.controllers.gradnorm import GradNorm
from morl.controllers.lagrangian import Lagrangian
from morl.controllers.mgda import MGDA
from morl.controllers.pama import PAMA
from morl.controllers.pcgrad import PCGrad
from morl.controllers.schedule import WeightSchedule
from morl.statistics import group_covariances, objective_gram, objective_losses  # shared with the diagnostics

__all__ = [
    "CTWA",
    "GDPO",
    "MGDA",
    "PAMA",
    "AdvantageLevel",
    "CAGrad",
    "FixedWeights",
    "GradNorm",
    "GradientLevel",
    "GradientWeighting",
    "GramWeighting",
    "HypervolumeWeighting",
    "Lagrangian",
    "PCGrad",
    "RewardLevel",
    "UsesValidation",
    "WeightController",
    "WeightSchedule",
    "check_scalarizer",
    "group_covariances",
    "objective_gram",
    "objective_losses",
    "per_objective",
]
