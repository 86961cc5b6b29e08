"""morl: multi-objective reinforcement fine-tuning of language models.

Compose small components — rewards, a scalarizer, an advantage estimator, a policy algorithm, a weight
controller and a rollout backend — into a :class:`Pipeline` and call ``fit``.
"""

from morl.batch import Batch
from morl.components import Component, RecipeError, build, registered
from morl.diagnostics import Diagnostics, DiagnosticsConfig
from morl.pipeline import Callback, FitResult, Pipeline, TrainConfig
from morl.policy import Policy, PolicyConfig

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Callback",
    "Component",
    "Diagnostics",
    "DiagnosticsConfig",
    "FitResult",
    "Pipeline",
    "Policy",
    "PolicyConfig",
    "RecipeError",
    "TrainConfig",
    "build",
    "registered",
]
