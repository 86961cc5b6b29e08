"""Linear scalarisation: ``s = Σ_m λ_m r_m``.

The baseline of every multi-objective RL paper and the scalarisation CTWA adapts. Weights are used
as given (free, not renormalised): controllers decide their normalisation.

Example:
    >>> import torch
    >>> Linear()(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([2.0, 0.5]))
    tensor([2.0000, 0.5000])
"""

from __future__ import annotations

import torch

from morl.scalarize.base import Scalarizer


class Linear(Scalarizer):
    name = "linear"

    def __call__(self, rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if rewards.shape[-1] != weights.shape[0]:
            raise ValueError(f"linear: {rewards.shape[-1]} objectives but {weights.shape[0]} weights")
        return rewards @ weights.to(rewards)
