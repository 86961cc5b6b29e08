"""Advantage estimators: scores ``[N]`` of P groups of K completions -> advantages ``[N]``.

All are group-relative: a prompt's completions are compared with each other, never with other
prompts' completions, except where batch whitening says so. A group whose scores are all equal
carries no signal and gets advantage 0, never NaN.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from morl.components import Component, ComponentConfig

_EPS = 1e-6


class AdvantageEstimator(Component):
    family = "advantage"

    def __call__(self, scores: torch.Tensor, group_size: int) -> torch.Tensor:
        raise NotImplementedError


def group_normalize(scores: torch.Tensor, group_size: int, scale: bool = True, unbiased: bool = True) -> torch.Tensor:
    """``(s - mean_g) / std_g`` per group (GRPO); ``s - mean_g`` when ``scale`` is False.

    Example:
        >>> group_normalize(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2)
        tensor([ 0.7071, -0.7071,  0.0000,  0.0000])
    """
    grouped = scores.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        std = grouped.std(dim=1, keepdim=True, unbiased=unbiased) if group_size > 1 else torch.zeros_like(centered)
        centered = torch.where(std > _EPS, centered / std.clamp_min(_EPS), torch.zeros_like(centered))
    return centered.reshape(scores.shape)


class GroupNorm(AdvantageEstimator):
    """GRPO's group-normalised advantage (Shao et al. 2024, https://arxiv.org/abs/2402.03300).

    ``scale=False`` keeps only the group-mean baseline (Dr. GRPO, https://arxiv.org/abs/2503.20783),
    which avoids up-weighting near-uniform groups. ``unbiased`` picks the sample (TRL) or population std.
    """

    name = "group_norm"

    class Config(ComponentConfig):
        scale: bool = Field(
            True, description="divide by the group's std (GRPO); False keeps only the mean baseline (Dr. GRPO)"
        )
        unbiased: bool = Field(True, description="sample std, n-1 (as TRL); False: population std, n")

    def __call__(self, scores: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_normalize(scores, group_size, self.config.scale, self.config.unbiased)


class RLOO(AdvantageEstimator):
    """Leave-one-out baseline (Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740).

    ``A_i = s_i - mean_{j != i} s_j = K/(K-1) · (s_i - mean_g)``.
    """

    name = "rloo"

    def __call__(self, scores: torch.Tensor, group_size: int) -> torch.Tensor:
        if group_size < 2:
            raise ValueError("rloo needs at least 2 completions per prompt (group_size >= 2)")
        return group_normalize(scores, group_size, scale=False) * group_size / (group_size - 1)


class BatchWhiten(AdvantageEstimator):
    """REINFORCE++ (Hu 2025, https://arxiv.org/abs/2501.03262): whiten advantages over the whole batch.

    With ``group_baseline`` (REINFORCE++-baseline) the group mean is subtracted first, so a
    zero-variance group stays at 0; without it, scores are whitened directly.
    """

    name = "batch_whiten"

    class Config(ComponentConfig):
        group_baseline: bool = Field(
            True, description="subtract each group's mean first (REINFORCE++-baseline); a flat group stays at 0"
        )
        center: Literal["batch", "none"] = Field(
            "batch", description="subtract the batch mean before dividing by the batch std; 'none': scale only"
        )

    def __call__(self, scores: torch.Tensor, group_size: int) -> torch.Tensor:
        values = group_normalize(scores, group_size, scale=False) if self.config.group_baseline else scores
        if self.config.center == "batch":
            values = values - values.mean()
        std = values.std() if values.numel() > 1 else torch.tensor(0.0)
        return values / std if std > _EPS else torch.zeros_like(values)
