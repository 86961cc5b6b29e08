"""The scalarizer contract: reward matrix ``[N, M]`` and weights ``[M]`` -> scalar score ``[N]``.

Scalarizers act at the **reward** level: they combine raw rewards into one score, which the
advantage estimator then normalises once. Weights come from the controller; a scalarizer never
owns them. Stateful scalarizers (a running ideal point) update in :meth:`observe`, called on
training batches only, before scoring.
"""

from __future__ import annotations

import torch

from morl.components import Component


class Scalarizer(Component):
    family = "scalarizer"

    def observe(self, rewards: torch.Tensor) -> None:
        """See a training batch's rewards before scoring it (default: stateless)."""

    def __call__(self, rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def fill_not_applicable(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Replace NaN ("not applicable") by the objective's mean over the group's applicable completions, else 0.

    What the scalarised score ``s = Σ λ_m r_m`` (or another scalarizer) reads, since it needs a number in every
    cell; the filled scores are what a step logs. They are not what the advantages are computed from wherever a
    fill would stand in for a missing comparison:

    - a completion that lacks a reward which applies to another completion of its group (or lacks every reward)
      cannot be compared with its group: :func:`mark_not_comparable` makes its score NaN, which the advantage
      estimators leave out of every group and batch statistic and give advantage 0 (TRL's convention for what it
      cannot score). Filled at the group mean it would add nothing to the spread but count in the std's K: with
      the other objectives flat in a group of 8 where 2 completions are applicable, the two would get ±1.87
      instead of the ±0.71 they get alone;
    - an objective that applies to no completion of a group is filled with 0 for the whole group: a constant, it
      leaves that group's comparison to the other objectives (a prompt with no ground truth still trains on them);
    - per-objective advantages (advantage and gradient levels) are computed from the raw rewards, NaN included
      (:func:`~morl.algos.advantages.per_objective_advantages`), for the same reason.

    So the advantages of the completions that are compared are exactly those computed on them alone. TRL's
    GRPOTrainer (``sum_then_normalize``) instead sums the weighted rewards with ``nansum``: a not-applicable reward
    counts as 0, which with rewards in [0, 1] ranks the completion as failing that objective.
    """
    if not torch.isnan(rewards).any():
        return rewards
    grouped = rewards.view(-1, group_size, rewards.shape[1])
    mean = torch.nanmean(grouped, dim=1, keepdim=True).nan_to_num(0.0).expand_as(grouped)
    return torch.where(torch.isnan(grouped), mean, grouped).reshape(rewards.shape)


def mark_unscorable(scores: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """``scores`` [N] with NaN where every objective of ``rewards`` [N, M] is NaN (nothing applies).

    Give the result to the advantage estimator, which leaves NaN out of its statistics and gives it advantage 0
    (TRL's ``unscorable_mask``); keep the unmarked scores for logging, where a filled value is a fair summary.
    For scores that scalarise filled rewards, use :func:`mark_not_comparable`.
    """
    return torch.where(torch.isnan(rewards).all(dim=1), torch.full_like(scores, float("nan")), scores)


def mark_not_comparable(scores: torch.Tensor, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``scores`` [N] (scalarised from :func:`fill_not_applicable`'s rewards) with NaN where the completion cannot
    be compared with its group: no objective applies to it, or an objective that applies to another completion of
    its group does not apply to it. The advantage estimator leaves NaN out and gives it 0, so the others' advantages
    are those of the comparable completions alone, in every group. A run without NaN gets ``scores`` itself.

    Example: a group of 3 where the first completion lacks objective 0, and a group where no completion has it.
        >>> nan = float("nan")
        >>> r = torch.tensor([[nan, 1.0], [1.0, 0.0], [0.0, 1.0], [nan, 1.0], [nan, 0.0], [nan, 0.0]])
        >>> mark_not_comparable(torch.arange(6.0), r, 3)
        tensor([nan, 1., 2., 3., 4., 5.])
    """
    missing = torch.isnan(rewards)
    if not missing.any():
        return scores
    grouped = missing.view(-1, group_size, rewards.shape[1])
    applies_in_group = (~grouped).any(dim=1, keepdim=True)
    excluded = (grouped & applies_in_group).any(dim=2) | grouped.all(dim=2)
    return torch.where(excluded.reshape(scores.shape), torch.full_like(scores, float("nan")), scores)
