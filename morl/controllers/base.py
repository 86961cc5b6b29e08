"""The weight-controller contract: it owns the weights λ and updates them from batch statistics.

A controller says *where* its weights act (:class:`WeightTarget`) and how they are normalised,
and which costly quantities it needs (``needs``); the pipeline computes only those.

Lifecycle per training step: :meth:`start` once (creates state for the objectives), then
:meth:`before_update` (sees raw rewards), :meth:`weights` (used by the step), the policy update,
then :meth:`after_update` (sees the updated batch record, e.g. clipped advantage weights).
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, Literal

import torch

from morl.batch import Batch
from morl.components import Component, RecipeError

Normalization = Literal["simplex", "sum_to_m", "free"]


class WeightTarget(str, Enum):
    """Where weights act: the same λ means different things at each point."""

    REWARD = "reward"  # scalarise raw rewards, then normalise once
    ADVANTAGE = "advantage"  # normalise each objective in its group, then combine
    GRADIENT = "gradient"  # combine per-objective policy gradients


class WeightController(Component):
    family = "controller"
    applies_to: ClassVar[WeightTarget] = WeightTarget.REWARD
    normalization: ClassVar[Normalization] = "free"
    # subset of {"clipped_weights", "objective_advantages", "objective_gradients", "validation"}; a controller that
    # needs "validation" has ``validation_size`` and ``validation_mode`` in its config
    needs: ClassVar[frozenset[str]] = frozenset()

    def start(self, objectives: list[str]) -> None:
        """Create learned state for these objectives, unless resumed state is already loaded."""
        self.objectives_ = list(objectives)

    def weights(self) -> torch.Tensor:
        raise NotImplementedError

    def before_update(self, batch: Batch) -> None:
        """Update from the batch's raw rewards before they are used (e.g. dual ascent)."""

    def after_update(self, batch: Batch) -> None:
        """Update from the batch after the policy step (e.g. clipped-weight covariances)."""

    def observe_validation(self, means: dict[str, float]) -> None:
        """Controllers that need ``"validation"``: per-objective means (and ``mean_length``) of the policy on a
        validation subset, before the first update and after every update."""

    def combine_advantages(self, objective_advantages: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Advantage-level controllers: ``[N, M]`` per-objective advantages -> ``[N]``."""
        raise NotImplementedError(f"{type(self).__name__} acts at the {self.applies_to.value} level")

    def combine_losses(self, policy, minibatch: Batch, algo) -> tuple[torch.Tensor, dict[str, float]]:
        """Gradient-level controllers: build the mini-batch loss from per-objective losses."""
        raise NotImplementedError(f"{type(self).__name__} acts at the {self.applies_to.value} level")

    def metrics(self) -> dict[str, float]:
        """Method state to log, under the method's own namespace; ``weights/{name}`` for every method."""
        return {f"weights/{name}": float(w) for name, w in zip(self.objectives_, self.weights().tolist())}


def per_objective(field: str, values: list[float] | dict[str, float], objectives: list[str]) -> list[float]:
    """Accept a list in objective order or a mapping by objective name; check it against the objectives."""
    if isinstance(values, dict):
        unknown = sorted(set(values) - set(objectives))
        if unknown:
            raise RecipeError(f"{field}: unknown objective(s) {unknown}; allowed: {objectives}")
        missing = [o for o in objectives if o not in values]
        if missing:
            raise RecipeError(f"{field}: no value for objective(s) {missing}; give one per objective {objectives}")
        return [float(values[o]) for o in objectives]
    if len(values) != len(objectives):
        raise RecipeError(f"{field}: {len(values)} values for {len(objectives)} objectives {objectives}")
    return [float(v) for v in values]
