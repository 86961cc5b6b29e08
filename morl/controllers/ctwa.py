"""CTWA — covariance-targeted weight adaptation ("Uncovering Cross-Objective Interference in
Multi-Objective Alignment", 2026).

The local covariance law says objective m improves at first order iff its reward covaries positively
with the training signal. CTWA keeps linear scalarisation ``s = Σ λ_m r_m`` with ``λ_m = exp(u_m)`` and,
after each policy update, on the same batch:

    w(x, y_k) = mean_l w^clip_{k,l}               clipped advantage weight under the updated policy
    c_m = mean_x Cov_k(r_m(x, y_k), w(x, y_k))    population covariance within each prompt group
    c̄_m ← (1-τ) c̄_m + τ c_m                       EMA, started at the first observed value
    δ_m = max(0, c*_m - c̄_m);   u_m ← u_m + η_λ δ_m

An objective whose covariance falls below its target gets more weight. No extra backward pass: only
one forward pass of the updated policy. Weights are ``exp(u)``, free (not renormalised).

Details from the reference code: non-finite weights and ``|w| > outlier_factor × median|w|`` are dropped
(the filter is skipped when the median is 0, which would otherwise drop every non-zero weight); groups with
fewer than 2 usable completions are skipped; not-applicable rewards are skipped per objective.

Options beyond the paper: ``signal="correlation"`` targets the correlation, which is unit-free, where a
covariance target is in the reward's units (a 0/1 reward's covariance is bounded by its spread);
``u_max`` bounds the log-weights; ``gate`` stops raising λ_m once the batch mean of r_m reaches a target.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import AllowInfNan, Field, field_validator

from morl import metrics as M
from morl.components import ComponentConfig
from morl.controllers.base import RewardLevel, per_objective
from morl.stages import Need, Updated

PAPER_TARGETS = [0.15, 0.08, 0.08]
PAPER_LAMBDA0 = [0.333, 0.333, 0.334]

# a gate threshold may be +inf, the same "never stop raising" as None (the form a sweep or an override can write);
# every other CTWA number must be finite (ComponentConfig refuses NaN and inf)
GateValue = Annotated[float, AllowInfNan(True)]


def group_covariances(
    rewards: np.ndarray, weights: np.ndarray, group_size: int, signal: str = "covariance", outlier_factor: float = 100.0
) -> np.ndarray:
    """``c_m``: mean over prompt groups of the within-group covariance (or correlation) of r_m and w.

    ``rewards`` [N, M] (NaN = not applicable), ``weights`` [N]. Objectives with no usable group get NaN.
    """
    n, m = rewards.shape
    usable = np.isfinite(weights)
    if usable.any():
        median = np.median(np.abs(weights[usable]))
        if median > 0:
            usable &= np.abs(np.where(usable, weights, 0.0)) <= outlier_factor * median
    out = np.full(m, np.nan)
    for j in range(m):
        values = []
        for g in range(n // group_size):
            rows = slice(g * group_size, (g + 1) * group_size)
            keep = usable[rows] & np.isfinite(rewards[rows, j])
            if keep.sum() < 2:
                continue
            r, w = rewards[rows, j][keep], weights[rows][keep]
            cov = np.mean((r - r.mean()) * (w - w.mean()))
            if signal == "correlation":
                scale = r.std() * w.std()
                cov = cov / scale if scale > 1e-12 else 0.0
            values.append(cov)
        if values:
            out[j] = float(np.mean(values))
    return out


class CTWA(RewardLevel):
    """Covariance-targeted weight adaptation at the reward level (paper defaults for M = 3)."""

    name = "ctwa"
    needs = frozenset({Need.CLIPPED_WEIGHTS})

    class Config(ComponentConfig):
        targets: list[float] | dict[str, float] = Field(
            default_factory=lambda: list(PAPER_TARGETS),
            description="covariance target c*_m of r_m with the training signal (reward units); list or by name",
        )
        lambda0: list[float] | dict[str, float] | None = Field(
            None, description="initial positive weights λ = exp(u); None: the paper's thirds for M = 3, else 1/M"
        )
        lr: float = Field(0.05, ge=0, description="η_λ: log-weight step per unit of covariance deficit, per update")
        ema: float = Field(0.1, gt=0, le=1, description="τ: EMA rate of the covariance; smaller is smoother but slower")
        signal: Literal["covariance", "correlation"] = Field(
            "covariance", description="track covariance (reward units) or correlation (unit-free targets)"
        )
        u_max: float | None = Field(None, description="upper bound on the log-weights u = log λ; None: unbounded")
        gate: list[GateValue | None] | dict[str, GateValue | None] | None = Field(
            None, description="stop raising λ_m once the batch mean of r_m reaches this; None or .inf: never stop"
        )
        outlier_factor: float = Field(
            100.0, gt=0, description="drop clipped weights with |w| above this many times the median |w|"
        )

        @field_validator("gate")
        @classmethod
        def _gate_is_a_level_or_never(
            cls, gate: list[float | None] | dict[str, float | None] | None
        ) -> list[float | None] | dict[str, float | None] | None:
            """+inf means never, as None does (a recipe saved as JSON writes it as null, which reads back the same).
            NaN would silently mean never too (no mean is >= NaN) and -inf always reached, which JSON would turn
            into never: both are refused rather than read as a choice."""
            values = list(gate.values()) if isinstance(gate, dict) else list(gate or [])
            if any(v is not None and (math.isnan(v) or v == -math.inf) for v in values):
                raise ValueError("a gate is a reward level, or None (or .inf) for never; NaN and -inf are not")
            return gate

    def start(self, objectives: list[str]) -> None:
        super().start(objectives)
        self._targets = np.array(per_objective("controller.targets", self.config.targets, objectives))
        self._gate = self._gate_thresholds(objectives)
        if getattr(self, "u_", None) is None:
            m = len(objectives)
            lam0 = self.config.lambda0 or ([1 / m] * m if m != 3 else PAPER_LAMBDA0)
            lam0 = np.array(per_objective("controller.lambda0", lam0, objectives))
            if (lam0 <= 0).any():
                raise ValueError(f"controller.lambda0 must be positive (λ = exp(u)); got {lam0.tolist()}")
            self.u_ = np.log(lam0)
            self.cov_ema_ = np.full(m, np.nan)
            self.last_cov_ = np.full(m, np.nan)

    def _gate_thresholds(self, objectives: list[str]) -> np.ndarray:
        gate = self.config.gate
        if gate is None:
            return np.full(len(objectives), np.inf)
        if isinstance(gate, dict):
            return np.array([np.inf if gate.get(o) is None else gate[o] for o in objectives], dtype=float)
        values = per_objective("controller.gate", [np.inf if v is None else v for v in gate], objectives)
        return np.array(values)

    def weights(self) -> torch.Tensor:
        return torch.as_tensor(np.exp(self.u_), dtype=torch.float32)

    def after_update(self, updated: Updated) -> None:
        rewards = updated.rewards.double().cpu().numpy()
        cov = group_covariances(
            rewards,
            updated.clipped_weights.double().cpu().numpy(),
            updated.group_size,
            self.config.signal,
            self.config.outlier_factor,
        )
        self.last_cov_ = cov
        seen = np.isfinite(cov)
        first = seen & ~np.isfinite(self.cov_ema_)
        tau = self.config.ema
        self.cov_ema_ = np.where(first, cov, np.where(seen, (1 - tau) * self.cov_ema_ + tau * cov, self.cov_ema_))
        deficit = np.maximum(0.0, self._targets - self.cov_ema_)
        deficit = np.where(np.isfinite(deficit), deficit, 0.0)
        reached = np.nanmean(rewards, axis=0) >= self._gate
        deficit = np.where(reached, 0.0, deficit)
        self.deficit_ = deficit
        self.u_ = self.u_ + self.config.lr * deficit
        if self.config.u_max is not None:
            self.u_ = np.minimum(self.u_, self.config.u_max)

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        for j, name in enumerate(self.objectives_):
            out[M.method_key(M.CTWA, "u", name)] = float(self.u_[j])
            out[M.method_key(M.CTWA, "cov", name)] = float(self.last_cov_[j])
            out[M.method_key(M.CTWA, "cov_ema", name)] = float(self.cov_ema_[j])
            out[M.method_key(M.CTWA, "target", name)] = float(self._targets[j])
        return out
