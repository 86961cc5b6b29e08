"""MGDA — the min-norm convex combination of per-objective gradients (Désidéri 2012; Sener & Koltun 2018,
"Multi-Task Learning as Multi-Objective Optimization", https://arxiv.org/abs/1810.04650).

    w* = argmin_{w ∈ Δ} ‖Σ_m w_m g_m‖² = argmin_{w ∈ Δ} wᵀ G w          G_ij = <g_i, g_j>

The step along ``-Σ w*_m g_m`` decreases every objective's loss at first order unless the point is Pareto
stationary (then the min-norm element is 0). Solved in Gram space: closed form for two objectives, Frank-Wolfe
with exact line search for more (Sener & Koltun's solver), with away steps (Lacoste-Julien & Jaggi 2015,
https://arxiv.org/abs/1511.05932): plain Frank-Wolfe zig-zags and stalls at 1e-2 relative error when the solution
lies on a face of the simplex; away steps converge linearly. Weights are on the simplex.

Hyperparameters:
    params: where the Gram matrix is measured. ``all`` is exact and costs M extra backward passes through the
        whole model and M gradient copies in memory. ``last_layers:N`` or a regex over parameter names is
        cheap: autograd stops each of the M backward passes at the subset (for the last blocks, a small
        fraction of the model) and holds ``M × |subset|`` floats; the Gram matrix is then that of the subset's
        gradients, an approximation. Either way the combined loss is backpropagated through the whole model.
    batched: compute the M gradients with one vmapped backward (``is_grads_batched``).
    normalize: gradient normalisation before solving, as in the paper's code: ``none``, ``l2`` (``g_m/‖g_m‖``),
        ``loss`` (``g_m/L_m``) or ``loss+`` (``g_m/(L_m ‖g_m‖)``); the weights found multiply the raw losses.
        The policy-gradient surrogate is ≈ 0 on-policy, so the loss-based ones use the positive reward gap
        ``reward_max - mean r_m`` as ``L_m``.
    max_iters, tol: Frank-Wolfe iterations and the stopping duality gap ``wᵀGw - min_m (Gw)_m``.

Example:
    >>> import numpy as np
    >>> min_norm_weights(np.array([[1.0, -1.0], [-1.0, 4.0]]))  # g1 = e1, g2 = -e1 + √3 e2 ... w = (5/7, 2/7)
    array([0.71428571, 0.28571429])
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from morl.controllers.gradients import GramConfig, GramWeighting


def _min_norm_segment(aa: float, ab: float, bb: float) -> float:
    """``γ ∈ [0, 1]`` minimising ``‖γ a + (1-γ) b‖²`` given the inner products."""
    denom = aa + bb - 2.0 * ab
    if denom <= 1e-15 * max(aa + bb, 1e-300):
        return 0.5
    return float(np.clip((bb - ab) / denom, 0.0, 1.0))


def min_norm_weights(gram: np.ndarray, max_iters: int = 3000, tol: float = 1e-10) -> np.ndarray:
    """Simplex weights of the min-norm element of the convex hull of gradients with Gram matrix ``gram``."""
    gram = np.asarray(gram, dtype=float)
    m = gram.shape[0]
    scale = np.trace(gram) / m
    if m == 1 or scale <= 0:  # one objective, or every gradient 0 (any weights do)
        return np.full(m, 1.0 / m)
    gram = gram / scale  # the weights are scale-free; tolerances are then relative
    if m == 2:
        gamma = _min_norm_segment(gram[0, 0], gram[0, 1], gram[1, 1])
        return np.array([gamma, 1.0 - gamma])
    w = np.full(m, 1.0 / m)
    for _ in range(max_iters):
        gw = gram @ w
        value = float(w @ gw)
        toward = int(np.argmin(gw))  # Frank-Wolfe vertex
        support = np.nonzero(w > 0)[0]
        away = int(support[np.argmax(gw[support])])  # away vertex: the worst objective still in the mix
        gap = value - gw[toward]  # Frank-Wolfe duality gap: the KKT residual
        if gap <= tol * max(value, 1e-12):
            break
        if gap >= gw[away] - value:
            direction, step_max = -w.copy(), 1.0
            direction[toward] += 1.0
        else:
            direction, step_max = w.copy(), w[away] / max(1.0 - w[away], 1e-300)
            direction[away] -= 1.0
        curvature = float(direction @ gram @ direction)
        slope = float(direction @ gw)
        step = step_max if curvature <= 0 else min(max(-slope / curvature, 0.0), step_max)  # exact line search
        w = np.maximum(w + step * direction, 0.0)
        w /= w.sum()
    return w


class MGDA(GramWeighting):
    """Min-norm (MGDA) weighting of per-objective policy gradients; weights on the simplex."""

    name = "mgda"
    normalization = "simplex"
    uses_reward_gaps = True

    class Config(GramConfig):
        normalize: Literal["none", "l2", "loss", "loss+"] = Field(
            "none", description="gradient normalisation before solving: none, g/‖g‖, g/L or g/(L‖g‖)"
        )
        reward_max: float = Field(
            1.0, description="best achievable reward; the loss-based normalisations use L = reward_max - mean reward"
        )
        max_iters: int = Field(3000, ge=1, description="Frank-Wolfe iterations at most (M > 2)")
        tol: float = Field(1e-10, gt=0, description="stopping relative duality gap of the Frank-Wolfe solver")

    def weights_from_gram(self, gram: np.ndarray, losses: np.ndarray, gaps: np.ndarray | None) -> np.ndarray:
        cfg = self.config
        norms = np.sqrt(np.maximum(np.diag(gram), 1e-20))
        scale = {
            "none": lambda: np.ones(len(norms)),
            "l2": lambda: norms,
            "loss": lambda: gaps,
            "loss+": lambda: gaps * norms,
        }[cfg.normalize]()
        self.weights_ = min_norm_weights(gram / np.outer(scale, scale), cfg.max_iters, cfg.tol)
        return self.weights_
