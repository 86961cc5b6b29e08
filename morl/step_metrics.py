"""A training step's metrics row, from its records: TRL's names where TRL has one (``rewards/{name}/mean``,
``completions/mean_length``, ``learning_rate``), the method's own state under its namespace."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from morl import metrics as M
from morl.algos import PolicyAlgo
from morl.algos.importance import importance_metrics
from morl.batch import Batch
from morl.controllers.base import WeightController
from morl.rewards import RewardFn
from morl.stages import Updated


def step_metrics(
    updated: Updated,
    step: int,
    rewards: Sequence[Any],
    controller: WeightController,
    algo: PolicyAlgo,
    reward_timeouts: dict[str, int],
    eos_token_id: int | None = None,
) -> dict[str, float]:
    """Per-objective reward means and spreads (NaN left out), the score, completion lengths, the update's own
    statistics, the controller's state and the weights this step trained with."""
    metrics: dict[str, float] = {"step": step}
    values = updated.rewards.detach().cpu()
    for m, name in enumerate(updated.objectives):
        column = values[:, m]
        valid = column[~torch.isnan(column)]
        metrics[M.reward_mean(name)] = float(valid.mean()) if valid.numel() else math.nan
        metrics[M.reward_std(name)] = float(valid.std()) if valid.numel() > 1 else math.nan
        if updated.scored.skipped.get(name):
            metrics[M.reward_stat(name, "skipped")] = updated.scored.skipped[name]
        if reward_timeouts.get(name):  # samples whose reward call ran past its time limit this step
            metrics[M.reward_stat(name, "timeouts")] = float(reward_timeouts[name])
    scores = updated.scores.detach().cpu()
    metrics[M.SCORE] = float(scores.mean())
    metrics[M.SCORE_STD] = float(scores.std())
    metrics.update(completion_metrics(updated.rollout, eos_token_id))
    grouped = scores.view(-1, updated.group_size)
    metrics[M.FRAC_REWARD_ZERO_STD] = float((grouped.std(dim=1, unbiased=False) < 1e-8).float().mean())
    metrics[M.ADVANTAGES_ZERO_FRACTION] = float((updated.advantages.abs() < 1e-8).float().mean())
    metrics.update(updated.stats)
    metrics.update(controller.metrics())
    metrics.update(controller.used_weights(updated.weighted))
    for name, reward in zip(updated.objectives, rewards):
        if isinstance(reward, RewardFn):
            for counter, value in reward.counters().items():  # accuracy's timeouts add to the call timeouts
                key = M.reward_stat(name, counter)
                metrics[key] = float(value) + metrics.get(key, 0.0)
    rollout = updated.rollout
    if rollout.sampling_logprobs is not None:
        cfg = algo.config
        metrics.update(
            importance_metrics(
                rollout.old_logprobs,
                rollout.sampling_logprobs,
                rollout.completion_mask,
                cfg.importance_correction,
                cfg.importance_cap,
            )
        )
    return metrics


def completion_metrics(rollout: Batch, eos_token_id: int | None) -> dict[str, float]:
    """Completion lengths in tokens, as TRL logs them: mean, min and max; the share that hit ``max_new_tokens``
    without an end-of-sequence token (``clipped_ratio``) and the lengths of those that did end (0 when none did)."""
    lengths = rollout.completion_lengths.float().cpu()
    out = {
        M.COMPLETIONS_MEAN_LENGTH: float(lengths.mean()),
        M.COMPLETIONS_MIN_LENGTH: float(lengths.min()),
        M.COMPLETIONS_MAX_LENGTH: float(lengths.max()),
    }
    if eos_token_id is None:
        return out
    ids, mask = rollout.completion_ids.cpu(), rollout.completion_mask.cpu().bool()
    terminated = ((ids == eos_token_id) & mask).any(dim=1)
    out[M.COMPLETIONS_CLIPPED_RATIO] = float((~terminated).float().mean())
    ended = lengths[terminated]
    for stat, value in (("mean", ended.mean), ("min", ended.min), ("max", ended.max)):
        out[M.COMPLETIONS_TERMINATED[stat]] = float(value()) if ended.numel() else 0.0
    return out


_ROW_KEYS = {"prompt", "completion", "rewards", "score", "advantage", "step", "segment"}


def completion_rows(updated: Updated, count: int | None) -> list[dict[str, Any]]:
    """The step's first ``count`` completions (None: all) with their prompt, the example's other columns (the
    ``answer``, ...: so ``morl score`` can score the file again), raw per-objective rewards (NaN: not applicable),
    score and advantage. Batch order keeps a prompt's K completions side by side, so the rows show what the advantage
    compared; no random draw, so logging them leaves the run's random streams alone."""
    rollout = updated.rollout
    n = rollout.size if count is None else min(count, rollout.size)
    rewards = updated.rewards[:n].detach().cpu().tolist()
    scores = updated.scores[:n].detach().cpu().tolist()
    advantages = updated.advantages[:n].detach().cpu().tolist()
    return [
        {
            "prompt": rollout.prompts[i],
            "completion": rollout.completions[i],
            **{key: values[i] for key, values in rollout.columns.items() if key not in _ROW_KEYS},
            "rewards": dict(zip(updated.objectives, rewards[i])),
            "score": scores[i],
            "advantage": advantages[i],
        }
        for i in range(n)
    ]
