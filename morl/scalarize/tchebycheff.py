"""Weighted Tchebycheff scalarisation and its smooth version, at the reward level.

**Tchebycheff** (Bowman 1976; Miettinen 1999): the score is the negated weighted distance, in the worst
objective, to an ideal point ``z``:

    s = -max_m w_m (z_m - r_m)

Unlike a weighted sum it can reach every Pareto-optimal point, including those on non-convex parts of the
front, and it rewards the objective that lags most. **Smooth Tchebycheff** (Lin et al. 2024, "Smooth Tchebycheff
Scalarization for Multi-Objective Optimization", https://arxiv.org/abs/2402.19078) replaces the max by a
log-sum-exp with smoothing ``μ``:

    s = -μ log Σ_m exp(w_m (z_m - r_m) / μ)

so every objective contributes to the gradient; ``s_tch - μ log M ≤ s_smooth ≤ s_tch``, equal as ``μ → 0``.

The ideal point (``reference``):
    ``running`` (default): the elementwise max of the rewards over all training batches so far, updated by
    :meth:`observe` before each batch is scored (the pipeline calls it on training batches only); state
    ``ideal_``, created on the first observe. ``batch``: the current batch's elementwise max (no state).
    ``fixed``: the point ``ideal`` given in the config.

Weights come from the controller (e.g. ``fixed``: 1/M each) and act on raw rewards (only under a reward-level
controller); the score is then normalised once by the advantage estimator. With 0/1 rewards and ideal 1, the
Tchebycheff score is ``-max_m w_m [r_m = 0]``: a completion is only as good as its worst objective.

Example:
    >>> import torch
    >>> r = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    >>> Tchebycheff(reference="fixed", ideal=[1.0, 1.0])(r, torch.tensor([0.5, 0.5]))
    tensor([-0.5000, -0.2500])
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from morl.components import ComponentConfig
from morl.scalarize.base import Scalarizer


class Tchebycheff(Scalarizer):
    """``s = -max_m w_m (z_m - r_m)`` with a running, per-batch or fixed ideal point ``z``."""

    name = "tchebycheff"

    class Config(ComponentConfig):
        reference: Literal["running", "batch", "fixed"] = Field(
            "running", description="ideal point z: max over training so far, the batch's max, or the fixed `ideal`"
        )
        ideal: list[float] | None = Field(
            None, description="ideal point z per objective (reward units); required with, and only with, fixed"
        )

        @model_validator(mode="after")
        def _ideal_only_when_fixed(self):
            if (self.reference == "fixed") != (self.ideal is not None):
                raise ValueError("give `ideal` exactly when reference is 'fixed'")
            return self

    def observe(self, rewards: torch.Tensor) -> None:
        if self.config.reference != "running":
            return
        batch_max = torch.nan_to_num(rewards.double(), nan=-np.inf).max(dim=0).values.cpu().numpy()
        previous = getattr(self, "ideal_", None)
        self.ideal_ = batch_max if previous is None else np.maximum(previous, batch_max)

    def ideal_point(self, rewards: torch.Tensor) -> torch.Tensor:
        """``z`` for scoring ``rewards``: the fixed point, the running one, or (before any observe) the batch max."""
        if self.config.reference == "fixed":
            z = torch.tensor(self.config.ideal, dtype=rewards.dtype, device=rewards.device)
        elif self.config.reference == "running" and getattr(self, "ideal_", None) is not None:
            z = torch.as_tensor(self.ideal_, dtype=rewards.dtype, device=rewards.device)
        else:
            z = rewards.max(dim=0).values
        if z.shape[0] != rewards.shape[-1]:
            raise ValueError(f"{self.name}: ideal point has {z.shape[0]} values for {rewards.shape[-1]} objectives")
        return z.to(rewards.device)

    def gaps(self, rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if rewards.shape[-1] != weights.shape[0]:
            raise ValueError(f"{self.name}: {rewards.shape[-1]} objectives but {weights.shape[0]} weights")
        return weights.to(rewards) * (self.ideal_point(rewards) - rewards)

    def __call__(self, rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return -self.gaps(rewards, weights).max(dim=-1).values


class SmoothTchebycheff(Tchebycheff):
    """``s = -μ logsumexp(w ⊙ (z - r) / μ)``; smoothing ``mu``: smaller is closer to Tchebycheff, larger smoother."""

    name = "smooth_tchebycheff"

    class Config(Tchebycheff.Config):
        mu: float = Field(0.1, gt=0, description="smoothing μ: smaller is closer to Tchebycheff, larger is smoother")

    def __call__(self, rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        mu = self.config.mu
        return -mu * torch.logsumexp(self.gaps(rewards, weights) / mu, dim=-1)
