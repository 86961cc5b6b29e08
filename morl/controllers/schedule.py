"""Weight schedule: move the weights from ``start`` to ``end`` over ``steps`` training steps (a warm-up).

Users of single-objective trainers ask for it as a reward "warm-up" or "curriculum": learn to be right first,
then ramp in a length penalty, or the other way round. It is open-loop — the weights depend on the step only,
never on the batch — which makes it the simplest controller that changes its weights, and a baseline for the
closed-loop ones (CTWA, Lagrangian) that react to what the batch shows. At the reward level (linear
scalarisation ``s = Σ λ_m(t) r_m``); weights are free (used as given, not renormalised).

With ``t`` the number of policy updates done so far (the weights of step ``t + 1``):

    p(t) = clamp((t - delay) / steps, 0, 1)
    linear:  λ(t) = start + p(t) · (end - start)
    cosine:  λ(t) = start + (1 - cos(π p(t))) / 2 · (end - start)

``start`` defaults to equal weights ``1/M`` and ``end`` to ``start`` (a constant schedule, the same as
``fixed``). Both take a list in objective order or a mapping by objective name.

Example:
    >>> c = WeightSchedule(start=[1.0, 0.0], end=[0.0, 1.0], steps=4); c.start(["a", "b"])
    >>> for _ in range(3):
    ...     print(c.weights().tolist()); c.after_update(None)
    [1.0, 0.0]
    [0.75, 0.25]
    [0.5, 0.5]
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from morl import metrics as M
from morl.components import ComponentConfig
from morl.controllers.base import RewardLevel, per_objective
from morl.controllers.fixed import not_all_zero
from morl.stages import Updated


class WeightSchedule(RewardLevel):
    """Weights that ramp from ``start`` to ``end`` over ``steps`` steps after ``delay``, linearly or on a cosine."""

    name = "schedule"

    class Config(ComponentConfig):
        start: list[float] | dict[str, float] | None = Field(
            None, description="weights at step 0, per objective (default: equal, 1/M)"
        )
        end: list[float] | dict[str, float] | None = Field(
            None, description="weights once the ramp is over (default: start, i.e. constant)"
        )
        steps: int = Field(100, ge=1, description="length of the ramp in training steps")
        delay: int = Field(0, ge=0, description="steps to hold the start weights before the ramp begins")
        shape: Literal["linear", "cosine"] = Field(
            "linear", description="linear, or cosine (slow at both ends, fastest half-way)"
        )

        @model_validator(mode="after")
        def _ends_on_some_weight(self) -> WeightSchedule.Config:
            """Ramping up from all-zero weights is a warm-up; ending on them (``end``, else a constant ``start``)
            trains nothing for the rest of the run, so it is refused."""
            try:
                not_all_zero(self.end if self.end else self.start)
            except ValueError as err:
                raise ValueError(f"{'end' if self.end else 'start'}: {err}") from None
            return self

    def start(self, objectives: list[str]) -> None:
        m = len(objectives)
        given = self.config.start
        self._start = np.array(per_objective("controller.start", given, objectives) if given else [1 / m] * m)
        end = self.config.end
        self._end = np.array(per_objective("controller.end", end, objectives)) if end else self._start.copy()
        for field, values in (("start", self._start), ("end", self._end)):
            if not np.isfinite(values).all():
                raise ValueError(f"controller.{field} must be finite numbers; got {values.tolist()}")
        super().start(objectives)

    def initial_state(self, objectives: list[str]) -> None:
        self.step_ = 0

    def progress(self) -> float:
        """How far along the ramp the next step is, from 0 (start weights) to 1 (end weights)."""
        done = (self.step_ - self.config.delay) / self.config.steps
        p = min(1.0, max(0.0, done))
        return p if self.config.shape == "linear" else (1.0 - math.cos(math.pi * p)) / 2.0

    def weights(self) -> torch.Tensor:
        return torch.as_tensor(self._start + self.progress() * (self._end - self._start), dtype=torch.float32)

    def after_update(self, updated: Updated | None) -> None:
        self.step_ += 1

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), M.method_key(M.SCHEDULE, "progress"): self.progress()}
