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
    cell. The group mean is neutral under group-relative advantages: the filled objective adds nothing to the
    completion's deviation from its group, so a missing reward neither helps nor hurts it, and the completion
    still counts through its applicable objectives. TRL's GRPOTrainer (``sum_then_normalize``) instead sums the
    weighted rewards with ``nansum``: a not-applicable reward counts as 0, which with rewards in [0, 1] ranks the
    completion as failing that objective; morl deliberately does not. Two cases are not left to the fill, and
    there morl does what TRL does:

    - a completion no objective applies to has no score: :func:`mark_unscorable` makes its score NaN, which the
      advantage estimators leave out of every group and batch statistic and give advantage 0;
    - per-objective advantages (advantage and gradient levels) are computed from the raw rewards, NaN included
      (:func:`~morl.algos.advantages.per_objective_advantages`): there a placeholder at the group mean would count
      in the std's K and inflate the applicable completions' advantages by ``sqrt((K-1)/(k-1))``.

    With one objective the two agree: the scalarised advantages of the applicable completions are those computed on
    the applicable completions alone.
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
    """
    return torch.where(torch.isnan(rewards).all(dim=1), torch.full_like(scores, float("nan")), scores)
