"""PAMA — Pareto multi-objective alignment (He & Maghsudi 2025, "Pareto Multi-Objective Alignment for Language
Models", https://arxiv.org/abs/2508.07768), as reimplemented in the paper's reference code.

PAMA builds on "Noon PPO" (advantages clipped below at 0, ``A⁺ = max(A, 0)``) and replaces MGDA's O(M²·d)
min-norm problem over parameter gradients by one over scalars. Per objective m and mini-batch:

    a_m = mean over valid tokens of A_m⁺          valid: completion tokens the loss leaves unclipped for A > 0
    α* = argmin_{α ∈ Δ} |Σ_m α_m a_m|             the min-norm convex combination of the scalars,
    a* = Σ_m α*_m a_m = projection of 0 onto [min_m a_m, max_m a_m]

and ``a*`` is the one shared advantage of every token in the clipped surrogate (tokens past the clip get no
gradient, as in the algorithm's loss). Since ``a_m ≥ 0``, ``a* = min_m a_m``: the update follows the objective
with the least positive signal, and stops (``a* = 0``) while any objective has no positive advantage in the
mini-batch, e.g. one whose reward is constant in every group. Note that one scalar for every token pushes up
the likelihood of every sampled completion alike; this follows the reference code, not a per-completion
weighting.

Where weights act: ``α`` (on the simplex) combines per-objective advantages, but the result needs the token
ratios of the policy being trained, so PAMA builds the mini-batch loss itself (gradient-level contract,
``combine_losses``), with one forward pass and no extra backward pass. The valid tokens are the loss's own
``unclipped`` mask for a positive advantage, ``ρ ≤ 1 + ε_high`` with the algorithm's ``clip_high`` and ratio (per
token, or per sequence under GSPO); every token is valid for an unclipped algorithm such as REINFORCE. No
hyperparameters of its own.

Example:
    >>> import numpy as np
    >>> pama_weights(np.array([0.4, 0.1, 0.3]))  # a* = min a = 0.1, all weight on objective 1
    (array([0., 1., 0.]), 0.1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from morl import distributed
from morl import metrics as M
from morl.batch import Batch
from morl.controllers.base import GradientLevel

if TYPE_CHECKING:
    from morl.algos import PolicyAlgo
    from morl.policy import Policy


def pama_weights(scalars: np.ndarray) -> tuple[np.ndarray, float]:
    """``(α*, a*)``: the min-norm convex combination of scalars, i.e. the projection of 0 onto their range."""
    scalars = np.asarray(scalars, dtype=float)
    lo, hi = int(np.argmin(scalars)), int(np.argmax(scalars))
    alpha = np.zeros(len(scalars))
    if scalars[lo] >= 0:
        alpha[lo] = 1.0
    elif scalars[hi] <= 0:
        alpha[hi] = 1.0
    else:  # 0 inside the range: mix the extremes so that the combination is exactly 0
        alpha[lo] = scalars[hi] / (scalars[hi] - scalars[lo])
        alpha[hi] = 1.0 - alpha[lo]
    return alpha, float(alpha @ scalars)


class PAMA(GradientLevel):
    """One shared Noon-PPO advantage per mini-batch from a scalar min-norm problem; weights on the simplex."""

    name = "pama"
    normalization = "simplex"

    def initial_state(self, objectives: list[str]) -> None:
        self.weights_ = np.full(len(objectives), 1.0 / len(objectives))

    def weights(self) -> torch.Tensor:
        return torch.as_tensor(self.weights_, dtype=torch.float32)

    def combine_losses(self, policy: Policy, minibatch: Batch, algo: PolicyAlgo) -> tuple[torch.Tensor, dict]:
        logp, entropy = algo.logprobs(policy, minibatch)
        # valid tokens: those the algorithm's loss would not clip for a positive advantage (ρ ≤ 1 + ε_high)
        probe = algo.loss(logp.detach(), minibatch, torch.ones(minibatch.size, dtype=logp.dtype, device=logp.device))
        valid = minibatch.completion_mask.bool() & probe.unclipped
        positive = minibatch.objective_advantages.clamp_min(0.0).to(logp.dtype)
        # token means over every process's rows of the mini-batch step (morl.distributed; local in one process)
        sums = (positive * valid.sum(dim=1, keepdim=True).to(logp.dtype)).sum(dim=0).double().cpu()
        totals = distributed.all_reduce_sum(torch.cat([sums, valid.sum().double().cpu().reshape(1)]))
        scalars = (totals[:-1] / totals[-1].clamp_min(1.0)).numpy()
        self.weights_, shared = pama_weights(scalars)
        self.scalars_ = scalars
        out = algo.loss(logp, minibatch, torch.full_like(positive[:, 0], shared), entropy)
        stats: dict[str, torch.Tensor | float] = dict(out.stats)
        stats[M.method_key(M.PAMA, "shared_advantage")] = shared
        return out.loss, stats

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        if getattr(self, "scalars_", None) is not None:
            for name, value in zip(self.objectives_, self.scalars_):
                out[M.method_key(M.PAMA, "positive_advantage", name)] = float(value)
        return out
