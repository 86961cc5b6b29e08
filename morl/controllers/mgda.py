"""MGDA — the min-norm convex combination of per-objective gradients (Désidéri 2012; Sener & Koltun 2018,
"Multi-Task Learning as Multi-Objective Optimization", https://arxiv.org/abs/1810.04650).

    w* = argmin_{w ∈ Δ} ‖Σ_m w_m g_m‖² = argmin_{w ∈ Δ} wᵀ G w          G_ij = <g_i, g_j>

The step along ``-Σ w*_m g_m`` decreases every objective's loss at first order unless the point is Pareto
stationary (then the min-norm element is 0). Solved exactly in Gram space by an active-set search: the minimiser
lies in the relative interior of one face ``S`` of the simplex, where it solves the equality-constrained system

    G_SS w_S + ν 1 = 0,   1ᵀ w_S = 1          (then wᵀGw = -ν)

and it is the face whose solution meets the KKT conditions ``w_S ≥ 0`` and ``(Gw)_i ≥ wᵀGw`` for ``i ∉ S``. Every
face is solved and the one that violates the KKT conditions least is kept (exactly one satisfies them in exact
arithmetic when the minimiser is unique): ``2^M - 1`` small solves, instant for the usual 2–6 objectives, and
exact to rounding (≈ 1e-16 · cond(G) in the weights). Iterative solvers are not: near Pareto stationarity the
gradients are nearly collinear, ``G`` is ill-conditioned (cond 1e7 is common) and Frank-Wolfe — even with away
steps — stalls with weights wrong in the first digit. Weights are on the simplex.

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

Example:
    >>> import numpy as np
    >>> min_norm_weights(np.array([[1.0, -1.0], [-1.0, 4.0]]))  # g1 = e1, g2 = -e1 + √3 e2 ... w = (5/7, 2/7)
    array([0.71428571, 0.28571429])
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
from pydantic import Field

from morl.components import RecipeError
from morl.controllers.gradients import GramConfig, GramWeighting


def _min_norm_segment(aa: float, ab: float, bb: float) -> float:
    """``γ ∈ [0, 1]`` minimising ``‖γ a + (1-γ) b‖²`` given the inner products."""
    denom = aa + bb - 2.0 * ab
    if denom <= 1e-15 * max(aa + bb, 1e-300):
        return 0.5
    return float(np.clip((bb - ab) / denom, 0.0, 1.0))


# the exact solver enumerates the 2^M - 1 faces of the simplex
MAX_OBJECTIVES = 16


def _face_minimiser(gram: np.ndarray, face: tuple[int, ...]) -> np.ndarray | None:
    """Minimiser of ``wᵀGw`` over ``{w : w_i = 0 off the face, Σ w = 1}`` (negative entries allowed); ``None``
    when it is not unique (the face's gradients are affinely dependent: a smaller face then holds a minimiser)."""
    k = len(face)
    kkt = np.zeros((k + 1, k + 1))
    kkt[:k, :k] = gram[np.ix_(face, face)]
    kkt[:k, k] = kkt[k, :k] = 1.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    try:
        solution = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        return None
    if not np.isfinite(solution).all():
        return None
    w = np.zeros(len(gram))
    w[list(face)] = solution[:k]
    return w


def _kkt_violation(gram: np.ndarray, w: np.ndarray, face: tuple[int, ...]) -> float:
    """How far ``w`` is from optimal: negative weights on the face, objectives off it with ``(Gw)_i < wᵀGw``."""
    gw = gram @ w
    slack = gw - w @ gw
    slack[list(face)] = np.inf
    return float(max(-w[list(face)].min(), -slack.min(), 0.0))


def min_norm_weights(gram: np.ndarray) -> np.ndarray:
    """Simplex weights of the min-norm element of the convex hull of gradients with Gram matrix ``gram``.

    Exact (active-set enumeration, see the module docstring); when the minimiser is not unique (linearly
    dependent gradients), one of the minimisers, the one with the smallest support first.
    """
    gram = np.asarray(gram, dtype=float)
    m = gram.shape[0]
    if m > MAX_OBJECTIVES:
        raise ValueError(
            f"MGDA's exact solver enumerates the 2^M faces of the simplex: at most {MAX_OBJECTIVES} objectives."
            f" Found M = {m}."
        )
    scale = np.trace(gram) / m
    if m == 1 or scale <= 0:  # one objective, or every gradient 0 (any weights do)
        return np.full(m, 1.0 / m)
    gram = gram / scale  # the weights are scale-free; the violations are then relative
    if m == 2:
        gamma = _min_norm_segment(gram[0, 0], gram[0, 1], gram[1, 1])
        return np.array([gamma, 1.0 - gamma])
    best, best_violation = np.full(m, 1.0 / m), np.inf
    for k in range(1, m + 1):
        for face in itertools.combinations(range(m), k):
            w = _face_minimiser(gram, face)
            if w is None:
                continue
            violation = _kkt_violation(gram, w, face)
            if violation < best_violation:
                best, best_violation = w, violation
    best = np.maximum(best, 0.0)  # rounding: -1e-17 is 0
    return best / best.sum()


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

    def start(self, objectives: list[str]) -> None:
        if len(objectives) > MAX_OBJECTIVES:  # refuse now rather than at the first mini-batch
            raise RecipeError(
                f"controller mgda: the exact min-norm solver supports at most {MAX_OBJECTIVES} objectives,"
                f" found {len(objectives)}"
            )
        super().start(objectives)

    def weights_from_gram(self, gram: np.ndarray, losses: np.ndarray, gaps: np.ndarray | None) -> np.ndarray:
        cfg = self.config
        norms = np.sqrt(np.maximum(np.diag(gram), 1e-20))
        scale = {
            "none": lambda: np.ones(len(norms)),
            "l2": lambda: norms,
            "loss": lambda: gaps,
            "loss+": lambda: gaps * norms,
        }[cfg.normalize]()
        self.weights_ = min_norm_weights(gram / np.outer(scale, scale))
        return self.weights_
