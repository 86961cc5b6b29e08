"""The two-mode example: one prompt, two completions ("good" and "bad"), closed forms against simulation.

With ``p = π(good)`` and a score ``s`` (here linear, ``s = λ·r``), the covariance of Theorem 4.2 is::

    Cov_π(r_m, s) = p (1 − p) (r_good,m − r_bad,m)(s_good − s_bad)

and under the tilt of Lemma 4.1 the log-odds ``ℓ = log(π(bad)/π(good))`` grow by exactly ``η (s_bad − s_good)``
per step, so ``ℓ_t = ℓ_0 + t η (s_bad − s_good)`` and ``p_t = sigmoid(−ℓ_t)``. If s prefers the bad mode
(``s_bad > s_good``), p falls every step and every objective with ``r_good,m > r_bad,m`` — accuracy, say —
falls monotonically: ``E_t[r_m] = r_bad,m + p_t (r_good,m − r_bad,m)``, while ``E_t[s]`` rises.

Example:
    >>> tm = TwoMode(r_good=[1.0, 0.0], r_bad=[0.0, 1.0], weights=[0.4, 0.6])
    >>> traj = tm.simulate(p_good=0.9, eta=0.5, steps=3)
    >>> bool(np.all(np.diff(traj.values[:, 0]) < 0))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from morl.theory.bandit import Bandit


@dataclass(frozen=True, eq=False)
class TwoModeTrajectory:
    """Steps ``0..T``: ``p_good [T+1]``, ``log_odds [T+1]`` (bad vs good), ``values [T+1, M]``, ``covariance [T+1, M]``
    (``Cov_π(r_m, s)`` at each step)."""

    p_good: np.ndarray
    log_odds: np.ndarray
    values: np.ndarray
    covariance: np.ndarray


@dataclass(frozen=True, eq=False)
class TwoMode:
    """Two completions with rewards ``r_good [M]``, ``r_bad [M]`` and linear scalarisation weights ``λ [M]``."""

    r_good: Sequence[float] | np.ndarray
    r_bad: Sequence[float] | np.ndarray
    weights: Sequence[float] | np.ndarray

    def __post_init__(self) -> None:
        for name in ("r_good", "r_bad", "weights"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        if not self.r_good.shape == self.r_bad.shape == self.weights.shape or self.r_good.ndim != 1:
            raise ValueError("Parameters `r_good`, `r_bad` and `weights` should be vectors of the same length M.")

    @property
    def s_good(self) -> float:
        return float(self.r_good @ self.weights)

    @property
    def s_bad(self) -> float:
        return float(self.r_bad @ self.weights)

    def log_odds_increment(self, eta: float) -> float:
        """Change of ``log(π(bad)/π(good))`` per tilt: ``η (s_bad − s_good)``."""
        return eta * (self.s_bad - self.s_good)

    def covariance(self, p_good: float | np.ndarray) -> np.ndarray:
        """Closed form ``p (1 − p)(r_good − r_bad)(s_good − s_bad)``; ``[M]``, or ``[T, M]`` for a vector of p."""
        p = np.asarray(p_good, dtype=np.float64)[..., None]
        return p * (1 - p) * (self.r_good - self.r_bad) * (self.s_good - self.s_bad)

    def bandit(self, p_good: float) -> Bandit:
        """The same problem as a one-prompt :class:`Bandit` (completion 0 = good, 1 = bad)."""
        return Bandit(np.log([[p_good, 1.0 - p_good]]), np.stack([self.r_good, self.r_bad])[None])

    def closed_form(self, p_good: float, eta: float, steps: int) -> TwoModeTrajectory:
        """The trajectory from the closed forms alone: ``ℓ_t = ℓ_0 + t η (s_bad − s_good)``."""
        log_odds = np.log((1 - p_good) / p_good) + np.arange(steps + 1) * self.log_odds_increment(eta)
        p = 1.0 / (1.0 + np.exp(log_odds))
        values = self.r_bad + p[:, None] * (self.r_good - self.r_bad)
        return TwoModeTrajectory(p, log_odds, values, self.covariance(p))

    def simulate(self, p_good: float, eta: float, steps: int) -> TwoModeTrajectory:
        """The trajectory by repeated :meth:`Bandit.tilt` on ``s = λ·r``, with covariances computed directly."""
        b = self.bandit(p_good)
        s = b.scalarize(self.weights)
        p, log_odds, values, cov = [], [], [], []
        for t in range(steps + 1):
            if t:
                b = b.tilt(s, eta)
            p.append(b.probs[0, 0])
            log_odds.append(b.logits[0, 1] - b.logits[0, 0])
            values.append(b.values())
            cov.append(b.covariance(s))
        return TwoModeTrajectory(np.array(p), np.array(log_odds), np.array(values), np.array(cov))
