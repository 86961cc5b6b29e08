"""Records without tokens, for the math that reads only rewards, scores and weights."""

from __future__ import annotations

from typing import Any

import torch

from morl.batch import Batch
from morl.stages import Scored, Updated, Weighted


def reward_batch(rewards: Any, group_size: int | None = None, **fields: Any) -> Batch:
    """A token-free training batch: ``rewards`` [N, M] as one group (or groups of ``group_size``); tensor
    ``fields`` such as ``advantages`` are converted to float32 (what gradient-level weightings read)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    n = rewards.shape[0]
    extra = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in fields.items()}
    return Batch(
        prompts=[""] * n,
        completions=[""] * n,
        columns={},
        group_size=group_size or n,
        input_ids=torch.zeros(n, 1, dtype=torch.long),
        attention_mask=torch.ones(n, 1, dtype=torch.long),
        completion_mask=torch.ones(n, 0, dtype=torch.long),
        prompt_width=1,
        rewards=rewards,
        **extra,
    )


def token_batch(old: torch.Tensor, advantages: torch.Tensor, mask=None, ref=None) -> Batch:
    """A training batch for loss math: old (and reference) log-probs [N, L], advantages [N], a completion mask."""
    n, length = old.shape
    return Batch(
        prompts=["p"] * n,
        completions=["c"] * n,
        columns={},
        group_size=n,
        input_ids=torch.zeros(n, length + 1, dtype=torch.long),
        attention_mask=torch.ones(n, length + 1, dtype=torch.long),
        completion_mask=mask if mask is not None else torch.ones(n, length, dtype=torch.long),
        prompt_width=1,
        old_logprobs=old,
        ref_logprobs=ref,
        advantages=advantages,
    )


def scored_record(rewards: Any, group_size: int | None = None, objectives: Any = None) -> Scored:
    """What a controller's ``before_update`` and ``combine_advantages`` see."""
    batch = reward_batch(rewards, group_size)
    names = tuple(objectives) if objectives is not None else tuple(f"r{m}" for m in range(batch.rewards.shape[1]))
    return Scored(rollout=batch, rewards=batch.rewards, objectives=names)


def updated_record(
    rewards: Any,
    group_size: int | None = None,
    *,
    scores: Any = None,
    clipped_weights: Any = None,
    objectives: Any = None,
) -> Updated:
    """What a controller's ``after_update`` and the diagnostics see; ``scores`` default to the reward sum."""
    scored = scored_record(rewards, group_size, objectives)
    scores = torch.as_tensor(scores, dtype=torch.float32) if scores is not None else scored.rewards.nansum(1)
    weighted = Weighted(
        scored=scored,
        weights=torch.ones(scored.rewards.shape[1]),
        scores=scores,
        advantages=torch.zeros_like(scores),
        objective_advantages=None,
        train=scored.rollout,
    )
    clipped = torch.as_tensor(clipped_weights, dtype=torch.float32) if clipped_weights is not None else None
    return Updated(weighted=weighted, stats={}, clipped_weights=clipped)
