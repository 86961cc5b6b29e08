"""morl's step, hosted by a trainer that owns generation and the update (TRL's ``GRPOTrainer``, or another).

A host calls two methods per generation batch, and :class:`HostedStep` drives morl's components exactly as morl's
own trainer does (:class:`morl.trainer.Trainer`), calling the same functions, with no arithmetic of its own:

    scored = Scored(rollout=batch, rewards=rewards, objectives=...)   the host's batch in morl's records
    weighted = step.weigh(scored)          forecast (when due), controller.before_update, controller.weigh
    ... the host trains on weighted.advantages (its loss, its optimizer steps) ...
    metrics = step.observe_update(new_logprobs)   clipped weights (PolicyAlgo.loss), controller.after_update,
                                                  controller.metrics, the diagnostics and alarms

``new_logprobs`` ``[N, L]`` are the completion log-probs under the updated policy, on the same batch: what a
controller that declares ``Need.CLIPPED_WEIGHTS`` (CTWA) and the clipped-weight diagnostics read. The forecast and
the gradient diagnostics differentiate or perturb the policy: they need ``policy``, an object with ``model`` and
``token_logprobs`` as :class:`morl.policy.Policy` has them.

What a host cannot run is refused here, once, for every host (:func:`check_hostable`): gradient-level controllers
combine per-objective losses inside the update, which the host owns; a controller that learns from validation
prompts needs generation between updates, which the host does not do.

Example (no model: rewards in, advantages and metrics out):
    >>> import torch
    >>> step = HostedStep({"name": "lagrangian", "primary": "a", "targets": [0.9], "dual_lr": 1.0}, ["a", "b"],
    ...                   diagnostics={"forecast_every": 0})
    >>> scored = Scored.from_rewards(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]), 2, ["a", "b"])
    >>> [round(a, 3) for a in step.weigh(scored).advantages.tolist()]
    [0.424, -0.424, 0.99, -0.99]
    >>> metrics = step.observe_update(None)
    >>> metrics["lagrangian/lambda/b"], round(metrics["cov/score/a"], 3)  # the dual moved; the law's covariance
    (0.4, 0.25)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from morl.algos import GRPO, PolicyAlgo, per_objective_advantages
from morl.callbacks import FitContext, ScoredContext, StepContext
from morl.components import Component, RecipeError, build
from morl.controllers.base import WeightController, check_family, check_scalarizer
from morl.diagnostics import Diagnostics, DiagnosticsConfig, make_diagnostics
from morl.forecast import ForecastWindow
from morl.stages import Need, Scored, Updated, Weighted

__all__ = ["HostedStep", "check_hostable"]


def check_hostable(controller: str | dict[str, Any] | Component) -> WeightController:
    """The controller (built from a name, a spec or an instance) if a host that owns the update can run it;
    otherwise a :class:`~morl.components.RecipeError` that says why not and what to use instead.

    Example:
        >>> check_hostable({"name": "gdpo"}).level
        'advantage'
        >>> check_hostable("mgda")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        morl.components.RecipeError: controller 'mgda' weighs at the gradient level: ...
    """
    built = build("controller", controller)
    check_family(built)
    name = built.name or type(built).__name__
    if built.loss_combiner() is not None:
        raise RecipeError(
            f"controller {name!r} weighs at the gradient level: it builds each mini-batch's loss from one policy "
            "loss per objective inside the update (controller.loss_combiner()), and the host trainer owns the "
            "update — inside TRL that would mean re-implementing GRPOTrainer's compute_loss once per objective. "
            "Use an advantage-level controller (lagrangian, gdpo) or a reward-level one (fixed, ctwa, schedule) "
            "here, or train with morl's own Pipeline (`morl fit`), which runs every family"
        )
    if Need.VALIDATION in built.needs:
        raise RecipeError(
            f"controller {name!r} learns from per-objective means on validation prompts, generated before the "
            "first and after every update (Need.VALIDATION); the host trainer generates only its training batches. "
            "Use gdpo or lagrangian here, or morl's own Pipeline for this controller"
        )
    return built


class HostedStep:
    """The morl part of a host trainer's step: weighting before the update, learning and diagnostics after it.

    Args:
        controller: a weight controller (name, spec or instance) that :func:`check_hostable` accepts.
        objectives: the objective names, in the order of the reward matrix's columns.
        scalarizer: for reward-level controllers (default ``linear``).
        advantage: the advantage estimator (default ``group_norm``, GRPO's).
        algo: the policy loss whose clip rule gives the clipped advantage weights (default: GRPO, ε = 0.2).
        diagnostics: ``True`` (defaults), ``False`` (none), a config or a mapping (:class:`~morl.diagnostics.
            DiagnosticsConfig`).
        policy: what the forecast and the gradient diagnostics run the model through (``model`` and
            ``token_logprobs``, as :class:`morl.policy.Policy`); None: neither runs.
        forecast: False where the host cannot perturb the parameters (they are sharded): the diagnostics'
            forecast is then off, and a controller that learns from it is refused.

    State: ``updates_`` (updates observed so far) and the components' own; :meth:`stateful_parts` names them for
    a host's checkpoints.
    """

    def __init__(
        self,
        controller: str | dict[str, Any] | Component,
        objectives: list[str] | tuple[str, ...],
        *,
        scalarizer: str | dict[str, Any] | Component = "linear",
        advantage: str | dict[str, Any] | Component = "group_norm",
        algo: PolicyAlgo | None = None,
        diagnostics: Diagnostics | DiagnosticsConfig | dict[str, Any] | bool | None = True,
        policy: Any = None,
        forecast: bool = True,
    ) -> None:
        repeated = sorted({o for o in objectives if list(objectives).count(o) > 1})
        if repeated:
            raise RecipeError(f"objectives {repeated} appear more than once: give each reward its own name")
        self.controller = check_hostable(controller)
        self.scalarizer = build("scalarizer", scalarizer)
        check_scalarizer(self.controller, self.scalarizer)
        self.advantage = build("advantage", advantage)
        self.algo = algo if algo is not None else GRPO()
        self.diagnostics = make_diagnostics(diagnostics)
        self.objectives = tuple(objectives)
        self.policy = policy
        self.controller.start(list(self.objectives))
        self.updates_ = 0
        self.forecast_owner, self.forecast_window = self._forecast_owner(forecast and policy is not None)
        self._fit: FitContext | None = None
        self._pending: Weighted | None = None

    def __repr__(self) -> str:
        return f"HostedStep(controller={self.controller!r}, objectives={list(self.objectives)})"

    @property
    def needs(self) -> frozenset[Need]:
        """What the controller and the diagnostics need computed (as :attr:`morl.trainer.Trainer.needs`)."""
        needs = set(self.controller.needs)
        if self.diagnostics is not None:
            needs |= set(self.diagnostics.needs)
        if self.forecast_window is None:
            needs.discard(Need.FORECAST)
        return frozenset(needs)

    @property
    def wants_new_logprobs(self) -> bool:
        """Whether :meth:`observe_update` needs the log-probs under the updated policy (one forward pass)."""
        return Need.CLIPPED_WEIGHTS in self.needs

    def stateful_parts(self) -> dict[str, Any]:
        """Every part whose state a host's checkpoint should carry, by role (:func:`morl.state.capture_parts`)."""
        parts: dict[str, Any] = {
            "controller": self.controller,
            "scalarizer": self.scalarizer,
            "advantage": self.advantage,
        }
        if self.diagnostics is not None:
            parts["diagnostics"] = self.diagnostics
        if self.forecast_window is not None:
            parts["forecast"] = self.forecast_window
        return parts

    def begin(self) -> None:
        """Once before training (or a resumed training) starts: the diagnostics' fit begins at ``updates_``."""
        self._fit = FitContext(
            run_dir=None,
            objectives=self.objectives,
            policy=self.policy,
            algo=self.algo,
            start_step=self.updates_,
            is_main=False,
        )
        if self.diagnostics is not None:
            self.diagnostics.on_fit_start(self._fit)

    # ---- the step ---------------------------------------------------------------------------------------------

    def weigh(self, scored: Scored) -> Weighted:
        """Before the update: the forecast when its window closes, the controller's ``before_update`` and its
        ``weigh``; returns the weighted record whose ``advantages`` the host trains on."""
        if self._fit is None:
            self.begin()
        forecast = self._forecast(scored)
        if self.diagnostics is not None:
            ctx = ScoredContext(fit=self._fit, step=self.updates_ + 1, scored=scored, forecast=forecast)
            self.diagnostics.on_batch_scored(ctx)
        self.controller.before_update(scored)
        objective_advantages = None
        if Need.OBJECTIVE_ADVANTAGES in self.needs:
            lengths = scored.rollout.completion_mask.sum(dim=1)
            objective_advantages = per_objective_advantages(self.advantage, scored.rewards, scored.group_size, lengths)
        weighted = self.controller.weigh(
            scored, scalarizer=self.scalarizer, advantage=self.advantage, objective_advantages=objective_advantages
        )
        self._pending = weighted
        return weighted

    @property
    def pending(self) -> bool:
        """A batch was weighed and its update not yet observed."""
        return self._pending is not None

    def observe_update(self, new_logprobs: torch.Tensor | None) -> dict[str, float]:
        """After the host's update on the weighed batch: the controller learns (``after_update``), and the step's
        metrics come back: the controller's state, the weights this step trained with, the diagnostics."""
        if self._pending is None:
            raise RuntimeError("observe_update() without a weighed batch: call weigh() first")
        weighted, self._pending = self._pending, None
        updated = self._updated(weighted, new_logprobs)
        self.controller.after_update(updated)
        self.updates_ += 1
        metrics = self.controller.metrics()
        metrics.update(self.controller.used_weights(weighted))
        if self.diagnostics is not None:
            self.diagnostics.on_step_end(
                StepContext(fit=self._fit, step=self.updates_, record=updated, metrics=metrics)
            )
        return metrics

    def _updated(self, weighted: Weighted, new_logprobs: torch.Tensor | None) -> Updated:
        """The update's record, with the clipped advantage weights under the updated policy when someone needs
        them (as :meth:`morl.trainer.Trainer._updated`: the loss's own ratio and clip mask)."""
        if not self.wants_new_logprobs:
            return Updated(weighted=weighted, stats={})
        if new_logprobs is None:
            raise ValueError(
                f"{sorted(n.value for n in self.needs)}: the clipped advantage weights need the completion "
                "log-probs under the updated policy (observe_update(new_logprobs))"
            )
        train = weighted.train
        if train.old_logprobs is None:
            raise ValueError("the clipped advantage weights need the sampling policy's log-probs (old_logprobs)")
        new_logprobs = new_logprobs.to(train.old_logprobs) * train.completion_mask
        clip = self.algo.loss(new_logprobs, train)
        return Updated(
            weighted=weighted,
            stats={},
            clipped_weights=self.algo.clipped_advantage_weight(new_logprobs, train, clip),
            new_ratio=clip.ratio,
            new_unclipped=clip.unclipped,
        )

    # ---- the forecast (one window, as the trainer owns it) --------------------------------------------------

    def _forecast_owner(self, allowed: bool) -> tuple[Any, ForecastWindow | None]:
        """Who sets the forecast's cadence (the controller first, then the diagnostics) and the one window that
        measures it (as :meth:`morl.trainer.Trainer._forecast_owner`)."""
        candidates = [self.controller, *([self.diagnostics] if self.diagnostics is not None else [])]
        owners = [c for c in candidates if Need.FORECAST in c.needs and c.forecast_every > 0]
        if not owners:
            return None, None
        if not allowed:
            if owners[0] is self.controller:
                raise RecipeError(
                    f"controller {self.controller.name!r} learns from the interference forecast, which perturbs the "
                    "policy's parameters in place: this host cannot (its parameters are sharded, or it gave no "
                    "policy). Use signal: covariance or correlation"
                )
            return None, None
        return owners[0], ForecastWindow(owners[0].forecast_every)

    def _forecast(self, scored: Scored) -> tuple[np.ndarray, np.ndarray] | None:
        window = self.forecast_window
        if window is None:
            return None
        result = window.measure(self.updates_ + 1, self.policy, self.forecast_owner.forecast_params, scored, self.algo)
        if result is not None and Need.FORECAST in self.controller.needs:
            self.controller.observe_forecast(*result)
        return result
