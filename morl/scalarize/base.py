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
    """Replace NaN ("not applicable") by the objective's mean in the same group, else 0.

    A group-mean value is neutral under group-relative advantages, so a missing reward neither
    helps nor hurts its completion.
    """
    if not torch.isnan(rewards).any():
        return rewards
    grouped = rewards.view(-1, group_size, rewards.shape[1])
    mean = torch.nanmean(grouped, dim=1, keepdim=True).nan_to_num(0.0).expand_as(grouped)
    return torch.where(torch.isnan(grouped), mean, grouped).reshape(rewards.shape)
