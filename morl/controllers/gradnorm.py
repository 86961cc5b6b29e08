"""GradNorm — gradient normalisation for adaptive loss balancing (Chen et al. 2018,
https://arxiv.org/abs/1711.02257), the paper's baseline with α = 1.5 and weight learning rate 0.025.

The loss is ``Σ_m w_m L_m``. For each mini-batch, with ``‖g_m‖`` the gradient norm of objective m on the chosen
parameters (GradNorm's "last shared layer"; only the Gram matrix's diagonal is needed):

    G_m = w_m ‖g_m‖,   Ḡ = mean_m G_m                              weighted gradient norms
    L̃_m = L_m / L_m(0),   r_m = L̃_m / mean_k L̃_k                  relative inverse training rates
    L_grad = Σ_m |G_m - Ḡ r_m^α|                                    target Ḡ r_m^α held constant
    w_m ← max(0, w_m - lr · sign(G_m - Ḡ r_m^α) ‖g_m‖),   then w ← M w / Σ w

Objectives that train slowly (large ``r_m``) get their gradient norm pushed up. The weights are non-negative
and sum to M; the loss of a mini-batch uses the current weights, the update sets the next ones.

The loss in ``L/L0``: the policy-gradient surrogate is ≈ 0 on-policy (advantages are centred) and can be
negative, which makes ``L/L0`` meaningless. GradNorm here measures training progress by the positive reward
gap ``L_m = reward_max - mean r_m`` of the mini-batch (1 - accuracy for a 0/1 reward; floored at 1e-3),
with ``L_m(0)`` from the first mini-batch. The gradients ``g_m`` are still those of the surrogates.

Hyperparameters: ``alpha`` (restoring-force strength), ``lr`` (weight learning rate), ``reward_max`` (the
best achievable reward, 1 for the paper's 0/1 rules); ``params`` defaults to the last block
(``last_layers:1``), GradNorm's last shared layer; ``batched`` as for every gradient-level weighting.

Example:
    >>> import numpy as np
    >>> # G = (1, 3), target Ḡ = 2 for both: w -> (1 + 0.1·1, 1 - 0.1·3) = (1.1, 0.7), renormalised to sum 2
    >>> gradnorm_step(np.ones(2), np.array([1.0, 3.0]), np.array([1.0, 1.0]), alpha=1.5, lr=0.1).round(4)
    array([1.2222, 0.7778])
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from morl import metrics as M
from morl.controllers.gradients import GramConfig, GramWeighting


def gradnorm_step(
    weights: np.ndarray, grad_norms: np.ndarray, loss_ratios: np.ndarray, alpha: float, lr: float
) -> np.ndarray:
    """One GradNorm update of the loss weights: an L1 (sub)gradient step, clipped at 0, renormalised to sum M."""
    m = len(weights)
    weighted = weights * grad_norms
    rates = loss_ratios / loss_ratios.mean()
    target = weighted.mean() * rates**alpha
    new = np.maximum(weights - lr * np.sign(weighted - target) * grad_norms, 0.0)
    total = new.sum()
    return new * m / total if total > 0 else np.ones(m)


class GradNorm(GramWeighting):
    """GradNorm loss weights at the gradient level; non-negative, summing to M."""

    name = "gradnorm"
    normalization = "sum_to_m"
    uses_reward_gaps = True

    class Config(GramConfig):
        params: str = Field(
            "last_layers:1", description="parameters whose gradient norms are balanced; default: the last block"
        )
        alpha: float = Field(1.5, ge=0, description="restoring force towards equal training rates; 0 equalises norms")
        lr: float = Field(0.025, ge=0, description="learning rate of the loss weights, per mini-batch")
        reward_max: float = Field(
            1.0, description="best achievable reward; training progress is the gap reward_max - mean reward"
        )

    def weights_from_gram(self, gram: np.ndarray, losses: np.ndarray, gaps: np.ndarray | None) -> np.ndarray:
        if getattr(self, "L0_", None) is None:
            self.L0_ = gaps
        current = self.weights_.copy()
        norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
        self.weights_ = gradnorm_step(current, norms, gaps / self.L0_, self.config.alpha, self.config.lr)
        return current

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        if getattr(self, "L0_", None) is not None:
            for name, value in zip(self.objectives_, self.L0_):
                out[M.method_key(M.GRADNORM, "L0", name)] = float(value)
        return out
