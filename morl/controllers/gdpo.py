"""GDPO — group reward-decoupled normalisation (Liu et al. 2026, "GDPO: Group reward-Decoupled Normalization Policy
Optimization for Multi-reward RL Optimization", https://arxiv.org/abs/2601.05242), named as in TRL's
``GRPOConfig.multi_objective_aggregation``.

``normalize_then_sum`` (GDPO): normalise each objective within its prompt group, weight, sum, then z-score
over the batch:

    A_m = (r_m - mean_g r_m) / std_g r_m          0 for a group where r_m does not vary
    A   = z_batch(Σ_m w_m A_m)

Not-applicable (NaN) rewards, as TRL: ``mean_g`` and ``std_g`` are taken over the group's applicable completions
and a not-applicable one gets ``A_m = 0``; a completion no objective applies to is left out of ``z_batch`` (and of
``group_z`` below) and gets 0.

``sum_then_normalize`` (GRPO on the weighted sum, TRL's default): ``A = group_z(Σ_m w_m r_m)``. Summing first
lets objectives with a large spread drown the others, and different reward combinations collapse onto the same
advantage; normalising first gives every objective the same say inside a group.

Where weights act: on per-objective advantages (advantage level) for ``normalize_then_sum``; on rewards for
``sum_then_normalize``. Weights are free (default 1 each, TRL's ``reward_weights``); both aggregations are
invariant to a common scale of the weights. ``A_m`` are the pipeline's per-objective advantages (the recipe's
advantage estimator; ``group_norm`` is GDPO's), ``group_z`` is GRPO's group normalisation (sample std).

Example:
    >>> import torch
    >>> aggregate_advantages(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
    ...                      torch.tensor([2.0, 1.0]), 2, "normalize_then_sum")
    tensor([ 0.7071, -0.7071])
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from morl.algos.advantages import batch_whiten, group_normalize
from morl.components import ComponentConfig
from morl.controllers.base import AdvantageLevel, per_objective
from morl.controllers.fixed import not_all_zero
from morl.scalarize.base import fill_not_applicable, mark_not_comparable, mark_unscorable
from morl.stages import Scored

Aggregation = Literal["sum_then_normalize", "normalize_then_sum"]


def batch_zscore(values: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(x - mean) / std`` over the batch (sample std); 0 where the batch does not vary. NaN entries (completions
    no objective applies to) are left out of the mean and std and get 0."""
    if torch.isnan(values).any():
        return batch_whiten(values, center=True, eps=eps)
    centered = values - values.mean()  # every entry applies: as runs before NaN support, bit for bit
    std = values.std() if values.numel() > 1 else torch.zeros((), device=values.device)
    return centered / std if std > eps else torch.zeros_like(values)


def aggregate_advantages(
    objective_advantages: torch.Tensor,
    rewards: torch.Tensor,
    weights: torch.Tensor,
    group_size: int,
    mode: Aggregation,
) -> torch.Tensor:
    """Combine objectives into one advantage per completion: ``[N, M]`` -> ``[N]``.

    As TRL: a completion no objective applies to (a row of NaN rewards) is left out of the group and batch
    statistics and gets 0; a not-applicable objective adds 0 to a completion's ``Σ_m w_m A_m`` (its per-objective
    advantage is 0). Under ``sum_then_normalize`` the weighted sum is normalised in its group as at the reward
    level: a completion that lacks a reward another completion of its group has is left out and gets 0
    (:func:`~morl.scalarize.base.mark_not_comparable`; TRL's ``nansum`` counts the missing reward as 0 instead).
    """
    weights = weights.to(objective_advantages)
    if mode == "normalize_then_sum":
        return batch_zscore(mark_unscorable(objective_advantages @ weights, rewards))
    filled = fill_not_applicable(rewards, group_size).to(weights.dtype)
    return group_normalize(mark_not_comparable(filled @ weights, rewards, group_size), group_size)


class GDPO(AdvantageLevel):
    """Decoupled (per-objective) group normalisation, or TRL's default sum-then-normalise."""

    name = "gdpo"
    normalization = "free"

    class Config(ComponentConfig):
        weights: list[float] | dict[str, float] | None = Field(
            None, description="weight per objective (list in objective order or by name); None: 1 each"
        )
        multi_objective_aggregation: Aggregation = Field(
            "normalize_then_sum",
            description="normalize_then_sum: per-objective group norm (GDPO); sum_then_normalize: GRPO on the sum",
        )

        _some_weight = field_validator("weights")(not_all_zero)

    def start(self, objectives: list[str]) -> None:
        super().start(objectives)
        given = self.config.weights
        self._weights = torch.tensor(
            per_objective("controller.weights", given, objectives) if given else [1.0] * len(objectives)
        )

    def weights(self) -> torch.Tensor:
        return self._weights

    def combine_advantages(self, objective_advantages: torch.Tensor, scored: Scored) -> torch.Tensor:
        return aggregate_advantages(
            objective_advantages,
            scored.rewards,
            self._weights,
            scored.group_size,
            self.config.multi_objective_aggregation,
        )
