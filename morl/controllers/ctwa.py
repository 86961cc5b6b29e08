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
one forward pass of the updated policy, which on a CPU with a spare core runs in a helper process beside the next
rollout (``train.overlap_after_update``, :mod:`morl.overlap`: the same weights, the ``ctwa/*`` metrics one row
later). Weights are ``exp(u)``, free (not renormalised).

Details from the reference code: non-finite weights and ``|w| > outlier_factor × median|w|`` are dropped
(the filter is skipped when the median is 0, which would otherwise drop every non-zero weight); groups with
fewer than 2 usable completions are skipped; not-applicable rewards are skipped per objective. With
``signal="correlation"``, a group where r_m or w is (numerically) constant has no defined correlation and is
left out of the mean for that objective, as the reference code does (counting it as 0 would pull the mean
towards 0 by the share of flat groups); when every usable group is flat the value is 0, no correlation signal.

Options beyond the paper: ``signal="correlation"`` targets the correlation, which is unit-free, where a
covariance target is in the reward's units (a 0/1 reward's covariance is bounded by its spread);
``signal="forecast"`` targets the interference forecast (:mod:`morl.forecast`): each objective's first-order change
along the last ``forecast_every`` updates, measured on the next batch before it is trained on, as a signal-to-noise
ratio ``z_m`` (clipped to ±3, unit-free). With ``targets: 0`` it asks only that no objective be forecast to fall,
which needs no number tuned to a task's rewards (``cookbook/recipes/ctwa_auto.yaml``);
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
from morl.stages import Need, Scored, Updated
from morl.statistics import group_covariances

PAPER_TARGETS = [0.15, 0.08, 0.08]
PAPER_LAMBDA0 = [0.333, 0.333, 0.334]

# a gate threshold may be +inf, the same "never stop raising" as None (the form a sweep or an override can write);
# every other CTWA number must be finite (ComponentConfig refuses NaN and inf)
GateValue = Annotated[float, AllowInfNan(True)]


FORECAST_CLIP = 3.0  # |z| beyond this is "certainly up/down": a larger z should not mean a larger step


class CTWA(RewardLevel):
    """Covariance-targeted weight adaptation at the reward level (paper defaults for M = 3).

    The paper's default targets are covariances in reward units and need tuning to a task (see the quickstart
    recipe); ``signal: forecast`` with ``targets: 0`` needs none.
    """

    name = "ctwa"

    class Config(ComponentConfig):
        targets: float | list[float] | dict[str, float] = Field(
            default_factory=lambda: list(PAPER_TARGETS),
            description="target c*_m of the signal (covariance: reward units; correlation, forecast: unit-free); "
            "one number for every objective, a list or by name. The paper's defaults need tuning to the task",
        )
        lambda0: list[float] | dict[str, float] | None = Field(
            None, description="initial positive weights λ = exp(u); None: the paper's thirds for M = 3, else 1/M"
        )
        lr: float = Field(
            0.05, ge=0, le=1e3, description="η_λ: log-weight step per unit of covariance deficit, per update"
        )
        ema: float = Field(0.1, gt=0, le=1, description="τ: EMA rate of the covariance; smaller is smoother but slower")
        signal: Literal["covariance", "correlation", "forecast"] = Field(
            "covariance",
            description="track covariance (reward units), correlation (unit-free) with the clipped weight, or the "
            "interference forecast's z (unit-free; measured every forecast_every steps on a fresh batch)",
        )
        forecast_every: int = Field(
            3,
            ge=1,
            description="signal forecast: steps per forecast window (one forward pass per measurement, two in half "
            "precision)",
        )
        u_max: float | None = Field(
            None,
            ge=-20,
            le=20,
            description="upper bound on the log-weights u = log λ (within ±20, where λ = e^u stays a float32); "
            "None: unbounded",
        )
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

    @property
    def needs(self) -> frozenset[Need]:  # type: ignore[override]
        return frozenset({Need.FORECAST}) if self.config.signal == "forecast" else frozenset({Need.CLIPPED_WEIGHTS})

    @property
    def forecast_every(self) -> int:
        """Steps per forecast window when the signal is the forecast (the step measures it), else 0."""
        return self.config.forecast_every if self.config.signal == "forecast" else 0

    forecast_params = "all"  # the forecast moves every trainable parameter

    def start(self, objectives: list[str]) -> None:
        targets = self.config.targets
        if isinstance(targets, int | float):
            targets = [float(targets)] * len(objectives)
        self._targets = np.array(per_objective("controller.targets", targets, objectives))
        self._gate = self._gate_thresholds(objectives)
        super().start(objectives)

    def initial_state(self, objectives: list[str]) -> None:
        m = len(objectives)
        lam0 = self.config.lambda0 or ([1 / m] * m if m != 3 else PAPER_LAMBDA0)
        lam0 = np.array(per_objective("controller.lambda0", lam0, objectives))
        if (lam0 <= 0).any():
            raise ValueError(f"controller.lambda0 must be positive (λ = exp(u)); got {lam0.tolist()}")
        if self.config.u_max is not None and self.config.u_max < np.log(lam0).max():
            raise ValueError(
                f"controller.u_max={self.config.u_max} is below the starting log-weights log(lambda0) = "
                f"{np.round(np.log(lam0), 3).tolist()}: the first update would cut the weights it should bound; "
                "use u_max >= 0 (lambda <= 1) or more"
            )
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

    def observe_forecast(self, change: np.ndarray, z: np.ndarray) -> None:
        """Keep the forecast's z (clipped); :meth:`before_update` of the same step moves the weights with it."""
        self._pending_forecast = np.clip(np.asarray(z, dtype=float), -FORECAST_CLIP, FORECAST_CLIP)

    def before_update(self, scored: Scored) -> None:
        pending = getattr(self, "_pending_forecast", None)
        if self.config.signal != "forecast" or pending is None:
            return
        self._pending_forecast = None
        self._move(pending, scored.rewards.double().cpu().numpy())

    def after_update(self, updated: Updated) -> None:
        if self.config.signal == "forecast":
            return
        rewards = updated.rewards.double().cpu().numpy()
        cov = group_covariances(
            rewards,
            updated.clipped_weights.double().cpu().numpy(),
            updated.group_size,
            self.config.signal,
            self.config.outlier_factor,
        )
        self._move(cov, rewards)

    def _move(self, cov: np.ndarray, rewards: np.ndarray) -> None:
        """EMA of the signal, deficit below the targets, log-weight step (skipped where the gate is reached)."""
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
