"""Fixed weights: the linear-scalarisation baseline (the paper's "linear")."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field, field_validator

from morl.components import ComponentConfig
from morl.controllers.base import RewardLevel, per_objective


def not_all_zero(values: list[float] | dict[str, float] | None) -> list[float] | dict[str, float] | None:
    """``values`` unchanged unless every weight given is 0 (a list or a mapping by objective name).

    Why: with every weight 0 every score is 0, so no completion is better than another and training makes no
    progress while looking healthy; that is a typo (or a sweep's corner), never an experiment. An empty list or
    mapping is left to mean the default weights.
    """
    if values is not None:
        numbers = list(values.values()) if isinstance(values, dict) else list(values)
        if numbers and not any(numbers):
            raise ValueError("the weights are all 0, so no objective would be trained")
    return values


class FixedWeights(RewardLevel):
    """Constant weights at the reward level; equal weights ``1/M`` when none are given.

    Weights are free (used as given, not renormalised).

    Example:
        >>> c = FixedWeights(weights=[0.5, 0.25]); c.start(["a", "b"]); c.weights()
        tensor([0.5000, 0.2500])
    """

    name = "fixed"

    class Config(ComponentConfig):
        weights: list[float] | dict[str, float] | None = Field(
            None, description="weight per objective, used as given (list in objective order or by name); None: 1/M"
        )

        _some_weight = field_validator("weights")(not_all_zero)

    def initial_state(self, objectives: list[str]) -> None:
        given = self.config.weights
        m = len(objectives)
        self.weights_ = np.array(per_objective("controller.weights", given, objectives) if given else [1 / m] * m)

    def weights(self) -> torch.Tensor:
        return torch.as_tensor(self.weights_, dtype=torch.float32)
