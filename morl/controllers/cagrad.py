"""CAGrad — conflict-averse gradient descent (Liu et al. 2021, https://arxiv.org/abs/2110.14048), in Gram space,
with LibMTL's defaults (``c = 0.5``, ``rescale = 1``).

With ``g_0 = (1/M) Σ g_m`` the average gradient and ``φ = c ‖g_0‖``, solve on the simplex

    x* = argmin_{x ∈ Δ}  xᵀ G b + φ √(xᵀ G x)          b = 1/M          (the dual of CAGrad's inner problem)

and update along ``d = g_0 + φ / ‖g_x‖ · g_x`` with ``g_x = Σ x*_m g_m``, divided by ``1 + c²`` (rescale 1),
``1 + c`` (rescale 2) or not at all (rescale 0). So ``d = Σ w_m g_m`` with

    w = (b + φ / √(x*ᵀ G x*) · x*) / (1 + c²)

which needs only the Gram matrix. ``c = 0`` is plain averaging; large ``c`` moves towards the min-norm (MGDA)
direction. Weights are free (non-negative, not normalised).

The inner problem is convex; it is solved by projected gradient descent with backtracking (LibMTL calls
scipy's SLSQP), to ``tol`` in the objective.

Zero gradients. An objective whose gradient is 0 (a mini-batch where its advantages are all 0) makes
``x*ᵀ G x* = 0`` reachable, and the formula's ``φ / (‖g_x‖ + 1e-8)`` then gives weights near 1e7 that multiply
a zero vector: the update is right, the weights (used as loss coefficients and logged) are meaningless. Any part
of ``w`` whose combination of gradients is (numerically) zero is dropped instead: the correction ``λ x*`` when
``‖g_x‖ λ`` is negligible (then ``d`` is the plain average ``g_0``), and, per objective, the excess over
``b_m`` of a weight times a gradient norm that is negligible. Such an objective gets ``b_m / divisor``, its
plain-averaging weight; ``d`` is unchanged to about 1e-12 of the gradients' scale.

Example:
    >>> import numpy as np
    >>> cagrad_weights(np.eye(2)).round(6)  # x* = (1/2, 1/2), φ = 0.5/√2, w = (1/2 + 1/2 · 1/2) / 1.25
    array([0.6, 0.6])
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from morl.controllers.gradients import GramConfig, GramWeighting

# a change of d below this, in units of the RMS gradient norm (the Gram matrix is scaled to trace M), is no change
_NEGLIGIBLE = 1e-12


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto ``{x ≥ 0, Σ x = 1}`` (sort-based, Held et al. 1974)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    k = np.nonzero(u - cumulative / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - cumulative[k] / (k + 1), 0.0)


def cagrad_inner(gram: np.ndarray, phi: float, max_iters: int = 1000, tol: float = 1e-12) -> np.ndarray:
    """``argmin_{x ∈ Δ} xᵀ G b + φ √(xᵀ G x + 1e-8)`` with ``b = 1/M``, by projected gradient with backtracking."""
    m = gram.shape[0]
    a = gram @ np.full(m, 1.0 / m)

    def norm(x: np.ndarray) -> float:  # a float32 Gram matrix can be non-PSD by rounding: never the root of < 0
        return float(np.sqrt(max(x @ gram @ x, 0.0) + 1e-8))

    def value(x: np.ndarray) -> float:
        return float(x @ a + phi * norm(x))

    x = np.full(m, 1.0 / m)
    fx, step = value(x), 1.0 / max(np.abs(gram).max(), 1e-12)
    for _ in range(max_iters):
        grad = a + phi * (gram @ x) / norm(x)
        while True:
            candidate = project_to_simplex(x - step * grad)
            fc = value(candidate)
            if fc <= fx - 0.5 / step * np.sum((candidate - x) ** 2) + 1e-15 or step < 1e-20:
                break
            step *= 0.5
        done = fx - fc <= tol * max(abs(fx), 1e-12)
        x, fx, step = candidate, fc, step * 2.0
        if done:
            break
    return x


def cagrad_weights(gram: np.ndarray, c: float = 0.5, rescale: int = 1) -> np.ndarray:
    """Weights ``w`` with CAGrad's update direction ``d = Σ_m w_m g_m``."""
    gram = np.asarray(gram, dtype=float)
    m = gram.shape[0]
    b = np.full(m, 1.0 / m)
    divisor = {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]
    scale = np.trace(gram) / m
    if scale <= 0:  # every gradient is 0: any weights give the same (zero) update
        return b / divisor
    gram = gram / scale  # the weights are scale-free; this keeps LibMTL's 1e-8 guards negligible at any scale
    phi = c * np.sqrt(max(b @ gram @ b, 0.0) + 1e-8) + 1e-8  # rounding can make a float32 Gram non-PSD
    x = cagrad_inner(gram, phi)
    norm_gx = np.sqrt(max(x @ gram @ x, 0.0))
    lam = phi / (norm_gx + 1e-8)
    excess = lam * x
    if lam * norm_gx <= _NEGLIGIBLE:  # g_x = 0: the correction moves d by nothing, d = g_0
        excess = np.zeros(m)
    # per objective: an excess times a (numerically) zero gradient moves d by nothing either
    excess = np.where(excess * np.sqrt(np.maximum(np.diag(gram), 0.0)) <= _NEGLIGIBLE, 0.0, excess)
    return (b + excess) / divisor


class CAGrad(GramWeighting):
    """Conflict-averse gradient combination; free non-negative weights."""

    name = "cagrad"
    normalization = "free"

    class Config(GramConfig):
        c: float = Field(
            0.5, ge=0, description="conflict aversion: 0 is plain averaging; larger moves towards MGDA's min-norm step"
        )
        rescale: Literal[0, 1, 2] = Field(1, description="divide the update by 1+c² (1), by 1+c (2) or not at all (0)")

    def weights_from_gram(self, gram: np.ndarray, losses: np.ndarray, gaps: np.ndarray | None) -> np.ndarray:
        self.weights_ = cagrad_weights(gram, self.config.c, self.config.rescale)
        return self.weights_
