"""The weight-controller contract: it owns the weights λ and updates them from the step's records.

Where weights act is the controller's type, because the same λ means different things at each point:

- :class:`RewardLevel`: the scalarizer combines raw rewards with λ, then the advantage estimator normalises
  once (fixed, CTWA, schedule);
- :class:`AdvantageLevel`: each objective is normalised in its group, then :meth:`AdvantageLevel.combine_advantages`
  turns ``[N, M]`` into ``[N]`` (Lagrangian, GDPO, hypervolume-guided weighting);
- :class:`GradientLevel`: :meth:`GradientLevel.combine_losses` builds each mini-batch's loss from per-objective
  losses (MGDA, GradNorm, PCGrad, CAGrad, PAMA, gradient-based dynamic weighting).

Only a reward-level controller uses the recipe's scalarizer; a recipe that pairs another with a non-linear
scalarizer is refused (:func:`check_scalarizer`).

Lifecycle per training step: :meth:`WeightController.start` once (creates state for the objectives), then
:meth:`WeightController.before_update` (sees the :class:`~morl.stages.Scored` rewards), :meth:`weights` (used by the
step), the policy update, then :meth:`WeightController.after_update` (sees the :class:`~morl.stages.Updated`
record, e.g. clipped advantage weights). What a controller needs computed it lists in ``needs``
(:class:`~morl.stages.Need`); a controller that learns from validation means also implements
:class:`UsesValidation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

import torch

from morl import metrics as M
from morl.batch import Batch
from morl.components import Component, RecipeError
from morl.stages import Need, Scored, Updated

if TYPE_CHECKING:
    from morl.algos import PolicyAlgo
    from morl.policy import Policy

Normalization = Literal["simplex", "sum_to_m", "free"]


class WeightController(Component):
    """Base of the three weighting families; subclass one of them, not this."""

    family = "controller"
    level: ClassVar[str] = ""  # "reward", "advantage" or "gradient": set by the family, recorded in the manifest
    normalization: ClassVar[Normalization] = "free"
    needs: ClassVar[frozenset[Need]] = frozenset()

    def start(self, objectives: list[str]) -> None:
        """Create learned state for these objectives, unless resumed state is already loaded."""
        self.objectives_ = list(objectives)

    def weights(self) -> torch.Tensor:
        """The current weights ``[M]`` (on the CPU; the step moves them to the policy's device)."""
        raise NotImplementedError

    def before_update(self, scored: Scored) -> None:
        """Update from the step's raw rewards before they are used (e.g. dual ascent)."""

    def after_update(self, updated: Updated) -> None:
        """Update from the step after the policy update (e.g. clipped-weight covariances)."""

    def metrics(self) -> dict[str, float]:
        """Method state to log, under the method's own namespace, and ``weights/{name}``: the current weights.

        After ``after_update`` these are the next step's weights; a step's metrics row replaces them with the
        weights that step used (:class:`~morl.stages.Weighted`), except at the gradient level, where weights are
        picked per mini-batch inside the update and the row keeps what this method returns after it.
        """
        return {M.weight(name): float(w) for name, w in zip(self.objectives_, self.weights().tolist())}


class RewardLevel(WeightController):
    """Weights scalarise raw rewards (through the recipe's scalarizer), then advantages are normalised once."""

    level = "reward"


class AdvantageLevel(WeightController):
    """Weights combine per-objective advantages, each normalised in its group first."""

    level = "advantage"
    needs = frozenset({Need.OBJECTIVE_ADVANTAGES})

    def combine_advantages(self, objective_advantages: torch.Tensor, scored: Scored) -> torch.Tensor:
        """``[N, M]`` per-objective advantages -> ``[N]``, on their device."""
        raise NotImplementedError


class GradientLevel(WeightController):
    """Weights combine per-objective policy losses (hence gradients) inside each mini-batch."""

    level = "gradient"
    needs = frozenset({Need.OBJECTIVE_ADVANTAGES})

    def combine_losses(self, policy: Policy, minibatch: Batch, algo: PolicyAlgo) -> tuple[torch.Tensor, dict]:
        """The mini-batch's loss from per-objective losses, and statistics to log."""
        raise NotImplementedError


@runtime_checkable
class UsesValidation(Protocol):
    """A controller that learns from per-objective means on validation prompts (hypervolume-guided weighting).

    The Evaluator scores ``validation_size`` prompts of the validation data (never the eval split the run reports),
    decoded as ``validation_mode`` says, before the first update and after every update.
    """

    @property
    def validation_size(self) -> int: ...

    @property
    def validation_mode(self) -> str: ...

    def observe_validation(self, means: dict[str, float]) -> None: ...


def check_scalarizer(controller: WeightController, scalarizer: Component) -> None:
    """A scalarizer only acts under a reward-level controller; refuse a recipe that would silently ignore one."""
    if isinstance(controller, RewardLevel) or scalarizer.name in ("linear", ""):
        return
    raise RecipeError(
        f"scalarizer: {scalarizer.name!r} would be ignored: controller {controller.name!r} weights at the "
        f"{controller.level} level, where the weights combine per-objective "
        f"{'advantages' if controller.level == 'advantage' else 'losses'}, not raw rewards. Use a reward-level "
        "controller (fixed, ctwa, schedule) with this scalarizer, or drop the scalarizer line"
    )


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
