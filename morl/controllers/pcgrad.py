"""PCGrad — projecting conflicting gradients (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning",
https://arxiv.org/abs/2001.06782), in Gram space.

For each objective i, in a random order of the others j: if ``<g_i^PC, g_j> < 0``, remove the conflicting
component, ``g_i^PC ← g_i^PC - <g_i^PC, g_j> / ‖g_j‖² · g_j``. The update is ``Σ_i g_i^PC``. Every projected
gradient stays a combination ``Σ_k c_ik g_k`` whose coefficients need only the Gram matrix, so the update is
``Σ_k w_k g_k`` with ``w = Σ_i c_i`` (torchjd's formulation): the loss ``Σ w_k L_k`` gives exactly PCGrad's
gradient. A projection only adds a non-negative multiple of ``g_j``, so every ``w_k ≥ 1`` (weights are free;
without conflicts they are all 1, plain summation).

Hyperparameters: ``seed`` for the random projection orders (drawn afresh for every mini-batch, reproducibly);
``params`` and ``batched`` as for every gradient-level weighting (see ``morl.controllers.gradients``).

Example:
    >>> import numpy as np
    >>> pcgrad_weights(np.array([[1.0, -1.0], [-1.0, 2.0]]), [[1], [0]])  # g1 = (1, 0), g2 = (-1, 1)
    array([2. , 1.5])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from morl.controllers.gradients import GramConfig, GramWeighting


def pcgrad_weights(gram: np.ndarray, orders: Sequence[Sequence[int]]) -> np.ndarray:
    """Weights ``w`` with ``Σ_i g_i^PC = Σ_k w_k g_k``; ``orders[i]`` is the order in which i meets the others."""
    gram = np.asarray(gram, dtype=float)
    m = gram.shape[0]
    total = np.zeros(m)
    for i in range(m):
        coef = np.zeros(m)
        coef[i] = 1.0
        for j in orders[i]:
            if j == i or gram[j, j] <= 0:
                continue
            dot = float(coef @ gram[:, j])
            if dot < 0:
                coef[j] -= dot / gram[j, j]
        total += coef
    return total


class PCGrad(GramWeighting):
    """Gradient surgery at the gradient level; free weights, each at least 1."""

    name = "pcgrad"
    normalization = "free"

    class Config(GramConfig):
        seed: int = Field(0, description="seed of the random projection orders (fresh per mini-batch, reproducible)")

    def weights_from_gram(self, gram: np.ndarray, losses: np.ndarray, gaps: np.ndarray | None) -> np.ndarray:
        m = gram.shape[0]
        self.calls_ = getattr(self, "calls_", 0) + 1
        rng = np.random.default_rng([self.config.seed, self.calls_])
        self.weights_ = pcgrad_weights(gram, [rng.permutation(m).tolist() for _ in range(m)])
        return self.weights_
