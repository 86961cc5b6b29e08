"""DAPO's dynamic sampling, as a batch filter: keep only the groups whose rewards vary.

A group whose K completions all earn the same reward has zero group-relative advantage: it passes no policy
gradient, yet it dilutes the token mean and the batch. DAPO (Yu et al. 2025, https://arxiv.org/abs/2503.14476)
drops such groups and samples more prompts until the batch is full again. With several objectives a group is
informative while *any* objective's reward varies within it (its per-objective advantages, and the weights of
advantage- and gradient-level methods, still see a signal); a NaN reward ("not applicable") equals another NaN.

Example: group 0 varies in the first objective, group 1 is constant everywhere (NaN counts as constant).
    >>> nan = float("nan")
    >>> rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, nan], [1.0, nan]])
    >>> informative_groups(rewards, group_size=2)
    tensor([ True, False])
"""

from __future__ import annotations

import torch


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[P]`` bool: True for each group of ``group_size`` consecutive rows of ``rewards`` ``[N, M]`` in which some
    objective's reward is not constant (NaN equal to NaN). A group of one completion is never informative."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, M], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rows do not split into groups of group_size={group_size}")
    grouped = rewards.view(-1, group_size, rewards.shape[1])
    first = grouped[:, :1]
    same = (grouped == first) | (torch.isnan(grouped) & torch.isnan(first))
    constant = same.all(dim=1)  # [P, M]
    return ~constant.all(dim=1)
