"""Lagrangian primal-dual weighting: one primary objective, the others as constraints ``E[r_k] ≥ c_k``
(constrained policy optimisation, e.g. Tessler et al. 2019, https://arxiv.org/abs/1805.11074; the paper's
baseline with primary accuracy, targets [0.9, 0.9], dual lr 0.01).

The Lagrangian ``E[r_0] + Σ_k λ_k (E[r_k] - c_k)`` is maximised over the policy and minimised over ``λ ≥ 0``:

    before each update:  λ_k ← max(0, λ_k + η (c_k - mean_batch r_k))      dual ascent on the constraint gap
    advantages:          A = A_0 + Σ_k λ_k A_k                             per-objective group-normalised A_m

Duals start at 0, so training starts on the primary objective alone; a constraint's dual grows while it is
violated and shrinks back to 0 once it is met. Weights (1 for the primary, λ_k for the constraints) act on
the per-objective advantages (advantage level) and are free (not normalised).

Hyperparameters: ``primary`` (objective name; default the first objective), ``targets`` (one per constraint, in
objective order without the primary, or a mapping by name), ``dual_lr`` (η), ``lambda_max`` (optional cap on every
dual).

``targets: start`` asks for no per-task number: each constraint is "not below where the policy started" — its mean
over the first ``start_batches`` training batches (duals stay 0 while they are measured) — and its gap is measured
in units of its standard deviation over those batches (1 when that is 0), so ``dual_lr`` is unit-free and one
recipe serves rewards on any scale (a 0/1 accuracy, a 0–10 brevity).

Example:
    >>> c = Lagrangian(primary="accuracy", targets={"clarity": 0.9}); c.start(["accuracy", "clarity"])
    >>> c.weights()  # duals start at 0: the primary objective alone
    tensor([1., 0.])
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from morl import metrics as M
from morl.components import ComponentConfig, RecipeError
from morl.controllers.base import AdvantageLevel, per_objective
from morl.stages import Scored


class Lagrangian(AdvantageLevel):
    """Dual ascent on constraint gaps; weights on advantages, free."""

    name = "lagrangian"
    normalization = "free"

    class Config(ComponentConfig):
        primary: str | None = Field(
            None, description="objective maximised with weight 1 (None: the first); the others are constraints"
        )
        targets: list[float] | dict[str, float] | Literal["start"] = Field(
            default_factory=lambda: [0.9, 0.9],
            description="constraint E[r_k] ≥ c_k per non-primary objective (reward units; list or by name), or "
            "'start': each at its own starting level, gaps in units of its starting spread",
        )
        start_batches: int = Field(
            3, ge=1, le=1000, description="with targets 'start': training batches that measure the starting levels"
        )
        dual_lr: float = Field(0.01, ge=0, description="η: dual step per unit of constraint gap, per update")
        lambda_max: float | None = Field(None, gt=0, description="cap on every dual λ_k; None: uncapped")

    def start(self, objectives: list[str]) -> None:
        primary = self.config.primary if self.config.primary is not None else objectives[0]
        if primary not in objectives:
            raise RecipeError(f"controller.primary: {primary!r} is not an objective; allowed: {objectives}")
        self._primary = objectives.index(primary)
        self._constraints = [i for i in range(len(objectives)) if i != self._primary]
        names = [objectives[i] for i in self._constraints]
        self._from_start = self.config.targets == "start"
        if not self._from_start:
            self._targets = np.array(per_objective("controller.targets", self.config.targets, names))
        super().start(objectives)

    def initial_state(self, objectives: list[str]) -> None:
        k = len(self._constraints)
        self.lambdas_ = np.zeros(k)
        if self._from_start:
            self.start_seen_ = 0  # batches measured so far
            self.start_sums_ = np.zeros((3, k))  # per constraint: count, sum, sum of squares of applicable rewards

    @property
    def targets(self) -> np.ndarray:
        """The constraint levels c_k (NaN while the starting levels are still being measured)."""
        if not self._from_start:
            return self._targets
        count, total, _ = self.start_sums_
        if self.start_seen_ < self.config.start_batches:
            return np.full(len(self._constraints), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / count, np.nan)

    def _scales(self) -> np.ndarray:
        """What one unit of gap is: 1 (reward units), or each constraint's starting standard deviation."""
        if not self._from_start:
            return np.ones(len(self._constraints))
        count, total, squares = self.start_sums_
        with np.errstate(invalid="ignore", divide="ignore"):
            var = squares / count - (total / count) ** 2
        std = np.sqrt(np.clip(np.nan_to_num(var), 0.0, None))
        return np.where(std > 0, std, 1.0)

    def before_update(self, scored: Scored) -> None:
        means = torch.nanmean(scored.rewards.double(), dim=0).cpu().numpy()[self._constraints]
        if self._from_start and self.start_seen_ < self.config.start_batches:
            rewards = scored.rewards.double().cpu().numpy()[:, self._constraints]
            seen = np.isfinite(rewards)
            values = np.where(seen, rewards, 0.0)
            self.start_sums_ = self.start_sums_ + np.stack([seen.sum(0), values.sum(0), (values**2).sum(0)])
            self.start_seen_ += 1
            self.last_means_ = means
            return  # the duals wait for the levels they protect
        targets = self.targets
        gap = np.where(np.isfinite(means) & np.isfinite(targets), (targets - means) / self._scales(), 0.0)
        self.lambdas_ = np.maximum(0.0, self.lambdas_ + self.config.dual_lr * gap)
        if self.config.lambda_max is not None:
            self.lambdas_ = np.minimum(self.lambdas_, self.config.lambda_max)
        self.last_means_ = means

    def weights(self) -> torch.Tensor:
        w = np.ones(len(self.objectives_))
        w[self._constraints] = self.lambdas_
        return torch.as_tensor(w, dtype=torch.float32)

    def combine_advantages(self, objective_advantages: torch.Tensor, scored: Scored) -> torch.Tensor:
        return objective_advantages @ self.weights().to(objective_advantages)

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        for j, i in enumerate(self._constraints):
            name = self.objectives_[i]
            out[M.method_key(M.LAGRANGIAN, "lambda", name)] = float(self.lambdas_[j])
            out[M.method_key(M.LAGRANGIAN, "target", name)] = float(self.targets[j])
        return out
