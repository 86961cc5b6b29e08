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

Each family turns a scored batch into a weighted one by its own :meth:`WeightController.weigh`, and says whether it
combines the update's losses (:meth:`WeightController.loss_combiner`): a trainer calls these and never asks which
family a controller is, so any trainer can host any controller.

Lifecycle per training step: :meth:`WeightController.start` once (creates state for the objectives unless resumed
state is loaded), then :meth:`WeightController.before_update` (sees the :class:`~morl.stages.Scored` rewards),
:meth:`WeightController.weigh`, the policy update, then :meth:`WeightController.after_update` (sees the
:class:`~morl.stages.Updated` record, e.g. clipped advantage weights). What a controller needs computed it lists in
``needs`` (:class:`~morl.stages.Need`), and it receives each result on the records or through the matching method
(``Need.VALIDATION``: :class:`UsesValidation`; ``Need.FORECAST``: :class:`morl.forecast.UsesForecast`).

Example, outside any trainer (tensors in, weights out):
    >>> from morl.components import build
    >>> controller = build("controller", {"name": "fixed", "weights": [0.5, 0.5]})
    >>> controller.start(["accuracy", "brevity"])
    >>> rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # 2 prompts x 2 completions
    >>> scored = Scored.from_rewards(rewards, group_size=2, objectives=["accuracy", "brevity"])
    >>> weighted = controller.weigh(scored, scalarizer=build("scalarizer", "linear"),
    ...                             advantage=build("advantage", "group_norm"))
    >>> [round(a, 3) for a in weighted.advantages.tolist()]
    [0.0, 0.0, 0.707, -0.707]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

import torch

from morl import metrics as M
from morl.algos.advantages import estimate_advantages
from morl.batch import Batch
from morl.components import Component, RecipeError
from morl.scalarize.base import fill_not_applicable, mark_not_comparable
from morl.stages import Need, Scored, Updated, Weighted

if TYPE_CHECKING:
    from morl.algos import AdvantageEstimator, PolicyAlgo
    from morl.policy import Policy
    from morl.scalarize import Scalarizer

LossCombiner = Callable[["Policy", Batch, "PolicyAlgo"], "tuple[torch.Tensor, dict]"]

Normalization = Literal["simplex", "sum_to_m", "free"]


class WeightController(Component):
    """Base of the three weighting families; subclass one of them, not this."""

    family = "controller"
    level: ClassVar[str] = ""  # "reward", "advantage" or "gradient": set by the family, recorded in the manifest
    normalization: ClassVar[Normalization] = "free"
    needs: ClassVar[frozenset[Need]] = frozenset()

    def start(self, objectives: list[str]) -> None:
        """Create learned state for these objectives, unless resumed state is already loaded (then keep it).

        Subclasses put their initial state in :meth:`initial_state`; whether to call it is decided here, once.
        """
        self.objectives_ = list(objectives)
        if not self.started():
            self.initial_state(self.objectives_)

    def started(self) -> bool:
        """Whether learned state exists (created by :meth:`initial_state` or loaded from a checkpoint).

        The learned state is the trailing-underscore attributes other than ``objectives_``, as in scikit-learn."""
        return any(k.endswith("_") and k != "objectives_" and v is not None for k, v in vars(self).items())

    def initial_state(self, objectives: list[str]) -> None:
        """Create the learned state of a fresh run (trailing-underscore attributes); nothing by default."""

    def weigh(
        self,
        scored: Scored,
        *,
        scalarizer: Scalarizer,
        advantage: AdvantageEstimator,
        objective_advantages: torch.Tensor | None = None,
        kl_penalty: torch.Tensor | None = None,
    ) -> Weighted:
        """Apply the current weights where this family acts: the scored batch becomes the weighted one the updater
        trains on. ``objective_advantages`` [N, M] are given when someone declared ``Need.OBJECTIVE_ADVANTAGES``;
        ``kl_penalty`` [N] is ``algo.kl_in: reward``'s, for the families that train on the score."""
        raise NotImplementedError

    def loss_combiner(self) -> LossCombiner | None:
        """How the updater builds each mini-batch's loss from per-objective losses; None: from the advantages."""
        return None

    def used_weights(self, weighted: Weighted) -> dict[str, float]:
        """``weights/{name}`` of the weights this step trained with, for its metrics row (``metrics()`` has already
        moved on to the next step's)."""
        used = weighted.weights.detach().cpu().tolist()
        return {M.weight(name): float(w) for name, w in zip(self.objectives_, used)}

    def weights(self) -> torch.Tensor:
        """The current weights ``[M]`` (on the CPU; the step moves them to the policy's device)."""
        raise NotImplementedError

    def before_update(self, scored: Scored) -> None:
        """Update from the step's raw rewards before they are used (e.g. dual ascent)."""

    def after_update(self, updated: Updated) -> None:
        """Update from the step after the policy update (e.g. clipped-weight covariances). A controller that needs
        the clipped weights may get it in the next step instead, after that step's rollout and before its weighting
        (``train.overlap_after_update``): the same weights follow."""

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
    trains_on_score = True  # the scalar score is the training signal (algo.kl_in: reward acts on it)

    def weigh(
        self,
        scored: Scored,
        *,
        scalarizer: Scalarizer,
        advantage: AdvantageEstimator,
        objective_advantages: torch.Tensor | None = None,
        kl_penalty: torch.Tensor | None = None,
    ) -> Weighted:
        filled = fill_not_applicable(scored.rewards, scored.group_size)
        weights = self.weights().to(filled)
        scalarizer.observe(filled)
        scores = scalarizer(filled, weights)
        if kl_penalty is not None:
            scores = scores - kl_penalty
        # a completion that lacks a reward its group has is left out of the statistics and gets advantage 0
        comparable = mark_not_comparable(scores, scored.rewards, scored.group_size)
        lengths = scored.rollout.completion_mask.sum(dim=1)
        advantages = estimate_advantages(advantage, comparable, scored.group_size, lengths)
        return _weighted(scored, weights, scores, advantages, objective_advantages)


class AdvantageLevel(WeightController):
    """Weights combine per-objective advantages, each normalised in its group first."""

    level = "advantage"
    trains_on_score = False
    needs = frozenset({Need.OBJECTIVE_ADVANTAGES})

    def combine_advantages(self, objective_advantages: torch.Tensor, scored: Scored) -> torch.Tensor:
        """``[N, M]`` per-objective advantages -> ``[N]``, on their device."""
        raise NotImplementedError

    def weigh(
        self,
        scored: Scored,
        *,
        scalarizer: Scalarizer,
        advantage: AdvantageEstimator,
        objective_advantages: torch.Tensor | None = None,
        kl_penalty: torch.Tensor | None = None,
    ) -> Weighted:
        assert objective_advantages is not None, "an advantage-level controller needs Need.OBJECTIVE_ADVANTAGES"
        filled = fill_not_applicable(scored.rewards, scored.group_size)
        weights = self.weights().to(filled)
        advantages = self.combine_advantages(objective_advantages, scored)
        return _weighted(scored, weights, filled @ weights, advantages, objective_advantages)


class GradientLevel(WeightController):
    """Weights combine per-objective policy losses (hence gradients) inside each mini-batch."""

    level = "gradient"
    trains_on_score = False
    needs = frozenset({Need.OBJECTIVE_ADVANTAGES, Need.OBJECTIVE_GRADIENTS})

    def combine_losses(self, policy: Policy, minibatch: Batch, algo: PolicyAlgo) -> tuple[torch.Tensor, dict]:
        """The mini-batch's loss from per-objective losses, and statistics to log."""
        raise NotImplementedError

    def weigh(
        self,
        scored: Scored,
        *,
        scalarizer: Scalarizer,
        advantage: AdvantageEstimator,
        objective_advantages: torch.Tensor | None = None,
        kl_penalty: torch.Tensor | None = None,
    ) -> Weighted:
        """The weights act inside the update; the weighted sums here are for logging."""
        assert objective_advantages is not None, "a gradient-level controller needs Need.OBJECTIVE_ADVANTAGES"
        filled = fill_not_applicable(scored.rewards, scored.group_size)
        weights = self.weights().to(filled)
        return _weighted(scored, weights, filled @ weights, objective_advantages @ weights, objective_advantages)

    def loss_combiner(self) -> LossCombiner:
        return self.combine_losses

    def used_weights(self, weighted: Weighted) -> dict[str, float]:
        """Weights are picked per mini-batch inside the update: :meth:`metrics` logs those, nothing here."""
        return {}


def _weighted(
    scored: Scored,
    weights: torch.Tensor,
    scores: torch.Tensor,
    advantages: torch.Tensor,
    objective_advantages: torch.Tensor | None,
) -> Weighted:
    """The weighting stage's record, with the batch the updater trains on."""
    train = dataclasses.replace(
        scored.rollout, rewards=scored.rewards, advantages=advantages, objective_advantages=objective_advantages
    )
    return Weighted(
        scored=scored,
        weights=weights,
        scores=scores,
        advantages=advantages,
        objective_advantages=objective_advantages,
        train=train,
    )


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


def check_family(controller: Component) -> None:
    """A controller must say where its weights act by subclassing one family."""
    if not isinstance(controller, (RewardLevel, AdvantageLevel, GradientLevel)):
        raise RecipeError(
            f"controller: {type(controller).__name__} subclasses none of RewardLevel, AdvantageLevel, GradientLevel "
            "(morl.controllers): its family says where its weights act, so subclass one of them"
        )
    if Need.VALIDATION in controller.needs and not isinstance(controller, UsesValidation):
        raise RecipeError(
            f"controller: {type(controller).__name__} declares Need.VALIDATION but does not implement "
            "validation_size, validation_mode and observe_validation (morl.controllers.UsesValidation)"
        )


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
