"""Lagrangian primal-dual weighting: one primary objective, the others as constraints ``E[r_k] ≥ c_k``
(constrained policy optimisation, e.g. Tessler et al. 2019, https://arxiv.org/abs/1805.11074; the paper's
baseline with primary accuracy, targets [0.9, 0.9], dual lr 0.01).

The Lagrangian ``E[r_0] + Σ_k λ_k (E[r_k] - c_k)`` is maximised over the policy and minimised over ``λ ≥ 0``:

    before each update:  λ_k ← max(0, λ_k + η (c_k - mean_batch r_k))      dual ascent on the constraint gap
    advantages:          A = A_0 + Σ_k λ_k A_k                             per-objective group-normalised A_m

Duals start at 0, so training starts on the primary objective alone; a constraint's dual grows while it is
violated and shrinks back to 0 once it is met. Weights (1 for the primary, λ_k for the constraints) act on
the per-objective advantages (advantage level) and are free (not normalised).

Hyperparameters: ``primary`` (objective name), ``targets`` (one per constraint, in objective order without
the primary, or a mapping by name), ``dual_lr`` (η), ``lambda_max`` (optional cap on every dual).

Example:
    >>> c = Lagrangian(primary="accuracy", targets={"clarity": 0.9}); c.start(["accuracy", "clarity"])
    >>> c.weights()  # duals start at 0: the primary objective alone
    tensor([1., 0.])
"""

from __future__ import annotations

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
        primary: str = Field("accuracy", description="objective maximised with weight 1; the others are constraints")
        targets: list[float] | dict[str, float] = Field(
            default_factory=lambda: [0.9, 0.9],
            description="constraint E[r_k] ≥ c_k per non-primary objective (reward units; list or by name)",
        )
        dual_lr: float = Field(0.01, ge=0, description="η: dual step per unit of constraint gap, per update")
        lambda_max: float | None = Field(None, gt=0, description="cap on every dual λ_k; None: uncapped")

    def start(self, objectives: list[str]) -> None:
        if self.config.primary not in objectives:
            raise RecipeError(f"controller.primary: {self.config.primary!r} is not an objective; allowed: {objectives}")
        self._primary = objectives.index(self.config.primary)
        self._constraints = [i for i in range(len(objectives)) if i != self._primary]
        names = [objectives[i] for i in self._constraints]
        self._targets = np.array(per_objective("controller.targets", self.config.targets, names))
        super().start(objectives)

    def initial_state(self, objectives: list[str]) -> None:
        self.lambdas_ = np.zeros(len(self._constraints))

    def before_update(self, scored: Scored) -> None:
        means = torch.nanmean(scored.rewards.double(), dim=0).cpu().numpy()[self._constraints]
        gap = np.where(np.isfinite(means), self._targets - means, 0.0)  # no applicable reward: no evidence
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
            out[M.method_key(M.LAGRANGIAN, "target", name)] = float(self._targets[j])
        return out
