"""Advantage estimators: scores ``[N]`` of P groups of K completions -> advantages ``[N]``.

All are group-relative: a prompt's completions are compared with each other, never with other
prompts' completions, except where batch whitening says so. A group whose scores are all equal
carries no signal and gets advantage 0, never NaN.

A NaN score means "not applicable" (a reward that does not apply to that completion, or a completion no
objective applies to): it is left out of every statistic, group or batch, and gets advantage 0. So the
advantages of the applicable completions are exactly those computed on the applicable completions alone: a
group where 2 of 16 completions are applicable is normalised by the spread of those 2, not by a spread
diluted by 14 placeholders (which would inflate them by sqrt(15/1) ≈ 3.9). TRL's GRPOTrainer does the same
with nanmean / nanstd.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from morl.components import Component, ComponentConfig

_EPS = 1e-6


class AdvantageEstimator(Component):
    family = "advantage"

    def __call__(self, scores: torch.Tensor, group_size: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Advantages ``[N]``; ``scores`` may hold NaN (not applicable), to leave out of every statistic and give 0.

        ``lengths`` ``[N]`` are the completions' token counts, for an estimator whose statistics weigh a completion by
        its tokens (``batch_whiten`` with ``whiten_over: tokens``); the others ignore them. Callers go through
        :func:`estimate_advantages`, which passes them only where :attr:`needs_lengths` says so, so an estimator
        written with ``__call__(self, scores, group_size)`` keeps working.
        """
        raise NotImplementedError

    @property
    def needs_lengths(self) -> bool:
        """Whether :meth:`__call__` needs the completions' token counts."""
        return False


def estimate_advantages(
    estimator: AdvantageEstimator, scores: torch.Tensor, group_size: int, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """``estimator``'s advantages ``[N]``, given the completions' token counts ``lengths`` ``[N]`` if it needs them."""
    if estimator.needs_lengths:
        return estimator(scores, group_size, lengths)
    return estimator(scores, group_size)


def _applicable_counts(grouped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of the non-NaN entries of ``[P, K]`` and their count per group ``[P, 1]`` (in the scores' dtype)."""
    applicable = ~torch.isnan(grouped)
    return applicable, applicable.sum(dim=1, keepdim=True).to(grouped.dtype)


def group_normalize(scores: torch.Tensor, group_size: int, scale: bool = True, unbiased: bool = True) -> torch.Tensor:
    """``(s - mean_g) / std_g`` per group (GRPO); ``s - mean_g`` when ``scale`` is False.

    NaN scores (not applicable) are left out of the group's mean and std and get 0.

    Example:
        >>> group_normalize(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2)
        tensor([ 0.7071, -0.7071,  0.0000,  0.0000])
        >>> group_normalize(torch.tensor([1.0, float("nan"), 0.0, float("nan")]), 4)  # as if the group were (1, 0)
        tensor([ 0.7071,  0.0000, -0.7071,  0.0000])
    """
    grouped = scores.view(-1, group_size)
    if not torch.isnan(grouped).any():  # every score applies: torch's own mean and std, as runs before NaN support
        centered = grouped - grouped.mean(dim=1, keepdim=True)
        if scale:
            std = grouped.std(dim=1, keepdim=True, unbiased=unbiased) if group_size > 1 else torch.zeros_like(centered)
            centered = torch.where(std > _EPS, centered / std.clamp_min(_EPS), torch.zeros_like(centered))
        return centered.reshape(scores.shape)
    applicable, count = _applicable_counts(grouped)
    zero = torch.zeros_like(grouped)
    mean = torch.where(applicable, grouped, zero).sum(dim=1, keepdim=True) / count.clamp_min(1)
    centered = torch.where(applicable, grouped - mean, zero)
    if scale:
        dof = count - 1 if unbiased else count
        var = centered.square().sum(dim=1, keepdim=True) / dof.clamp_min(1)
        std = torch.where(dof > 0, var.sqrt(), torch.zeros_like(var))
        centered = torch.where(std > _EPS, centered / std.clamp_min(_EPS), zero)
    return centered.reshape(scores.shape)


def batch_whiten(
    values: torch.Tensor, center: bool = True, eps: float = _EPS, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """``(x - mean) / std`` over the batch (sample std; no centring when ``center`` is False); NaN entries are
    left out of both statistics and get 0, and a batch that does not vary gets 0 everywhere.

    With ``lengths`` (token counts ``[N]``) the statistics are over tokens, each completion's value repeated on
    each of its tokens: ``mean = Σ L_i x_i / T`` and ``var = Σ L_i (x_i - mean)² / (T - 1)`` with ``T = Σ L_i``
    (verl's ``masked_whiten`` of a per-token value; a completion of 3 tokens weighs 3 times one of 1 token).

    Example: lengths 1 and 3, values 1 and 0: mean 1/4, var (3/4 · 3/4 + 3 · 1/16) / 3 = 1/4, std 1/2.
        >>> batch_whiten(torch.tensor([1.0, 0.0]), lengths=torch.tensor([1, 3]))
        tensor([ 1.5000, -0.5000])
    """
    if lengths is not None:
        return _token_whiten(values, lengths, center, eps)
    applicable = ~torch.isnan(values)
    if applicable.all():  # every value applies: the same operations as runs before NaN support, bit for bit
        values = values - values.mean() if center else values
        std = values.std() if values.numel() > 1 else torch.tensor(0.0)
        return values / std if std > eps else torch.zeros_like(values)
    count = int(applicable.sum())
    kept = values[applicable]
    std = kept.std() if count > 1 else torch.zeros((), dtype=values.dtype, device=values.device)
    if not std > eps:
        return torch.zeros_like(values)
    centered = values - kept.mean() if center else values
    return torch.where(applicable, centered / std, torch.zeros_like(values))


def _token_whiten(values: torch.Tensor, lengths: torch.Tensor, center: bool, eps: float) -> torch.Tensor:
    """:func:`batch_whiten` over tokens: each completion weighs its token count in the mean and the std."""
    if lengths.shape != values.shape:
        raise ValueError(f"lengths {tuple(lengths.shape)} do not match the scores {tuple(values.shape)}")
    applicable = ~torch.isnan(values)
    zero = torch.zeros_like(values)
    weight = torch.where(applicable, lengths.to(device=values.device, dtype=values.dtype), zero)
    kept = torch.where(applicable, values, zero)
    tokens = weight.sum()
    if not tokens > 1:
        return zero
    mean = (weight * kept).sum() / tokens
    std = ((weight * (kept - mean).square()).sum() / (tokens - 1)).sqrt()
    if not std > eps:
        return zero
    return torch.where(applicable, ((values - mean) if center else values) / std, zero)


def per_objective_advantages(
    estimator: AdvantageEstimator, rewards: torch.Tensor, group_size: int, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """``[N, M]`` raw rewards (NaN = not applicable) -> ``[N, M]`` advantages, each objective on its own.

    Pass the raw rewards, not :func:`~morl.scalarize.base.fill_not_applicable`'s: a placeholder at the group mean
    adds nothing to the spread but counts in the std's K, which would inflate the applicable completions'
    advantages by ``sqrt((K-1)/(k-1))`` (k applicable out of K). Raw, a not-applicable completion gets 0 for that
    objective and the others get what the applicable completions alone would give them. ``lengths``: the
    completions' token counts, for an estimator that needs them (:func:`estimate_advantages`).
    """
    columns = [estimate_advantages(estimator, rewards[:, m], group_size, lengths) for m in range(rewards.shape[1])]
    return torch.stack(columns, dim=1)


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

    def __call__(self, scores: torch.Tensor, group_size: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return group_normalize(scores, group_size, self.config.scale, self.config.unbiased)


class RLOO(AdvantageEstimator):
    """Leave-one-out baseline (Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740).

    ``A_i = s_i - mean_{j != i} s_j = K/(K-1) · (s_i - mean_g)``, with K the group's applicable completions
    (non-NaN scores); a group with fewer than 2 applicable gets 0.
    """

    name = "rloo"

    def __call__(self, scores: torch.Tensor, group_size: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if group_size < 2:
            raise ValueError("rloo needs at least 2 completions per prompt (group_size >= 2)")
        _, count = _applicable_counts(scores.view(-1, group_size))
        factor = torch.where(count > 1, count / (count - 1).clamp_min(1), torch.zeros_like(count))
        return (group_normalize(scores, group_size, scale=False).view(-1, group_size) * factor).reshape(scores.shape)


class BatchWhiten(AdvantageEstimator):
    """REINFORCE++ (Hu 2025, https://arxiv.org/abs/2501.03262): whiten advantages over the whole batch.

    With ``group_baseline`` (REINFORCE++-baseline) the group mean is subtracted first, so a
    zero-variance group stays at 0; without it, scores are whitened directly.

    ``whiten_over`` says what the batch mean and std are taken over:

    - ``completions`` (the default): one value per completion, ``mean = Σ_i x_i / N``, sample std over the N
      completions;
    - ``tokens``: over all completion tokens of the batch, as the REINFORCE++ authors' code (verl's
      ``reinforce_plus_plus`` estimators whiten a per-token return with the response mask): ``mean = Σ_i L_i x_i /
      T``, ``var = Σ_i L_i (x_i - mean)² / (T - 1)`` with ``L_i`` the completion's tokens and ``T = Σ_i L_i``, so a
      long completion weighs more. Needs the completions' token counts (``lengths``).

    Either way a not-applicable (NaN) score is left out of the statistics and gets 0, and the group baseline is
    the plain mean of the group's completions.

    Example: lengths 1 and 3 (one prompt, no group baseline): over completions the two values whiten to ±1/√2;
    over tokens the mean is 1/4 and the std 1/2 (see :func:`batch_whiten`).
        >>> scores, lengths = torch.tensor([1.0, 0.0]), torch.tensor([1, 3])
        >>> BatchWhiten(group_baseline=False)(scores, 2, lengths)
        tensor([ 0.7071, -0.7071])
        >>> BatchWhiten(group_baseline=False, whiten_over="tokens")(scores, 2, lengths)
        tensor([ 1.5000, -0.5000])
    """

    name = "batch_whiten"

    class Config(ComponentConfig):
        group_baseline: bool = Field(
            True, description="subtract each group's mean first (REINFORCE++-baseline); a flat group stays at 0"
        )
        center: Literal["batch", "none"] = Field(
            "batch", description="subtract the batch mean before dividing by the batch std; 'none': scale only"
        )
        whiten_over: Literal["completions", "tokens"] = Field(
            "completions",
            description="batch statistics over completions (one value each) or over tokens (the REINFORCE++ "
            "authors' verl code: a completion weighs its token count)",
        )

    @property
    def needs_lengths(self) -> bool:
        return self.config.whiten_over == "tokens"

    def __call__(self, scores: torch.Tensor, group_size: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
        over_tokens = self.needs_lengths
        if over_tokens and lengths is None:
            raise ValueError(
                "advantage batch_whiten with whiten_over: tokens needs the completions' token counts (lengths);"
                " this caller gives none. Use whiten_over: completions here"
            )
        values = scores
        if self.config.group_baseline:  # NaN (not applicable) stays NaN, out of the batch statistics
            values = torch.where(torch.isnan(scores), scores, group_normalize(scores, group_size, scale=False))
        return batch_whiten(values, center=self.config.center == "batch", lengths=lengths if over_tokens else None)
