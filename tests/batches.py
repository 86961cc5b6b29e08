"""Batch records without tokens, for the math that reads only rewards, scores and weights."""

from __future__ import annotations

from typing import Any

import torch

from morl.batch import Batch


def reward_batch(rewards: Any, group_size: int | None = None, **fields: Any) -> Batch:
    """``rewards`` [N, M] as one group (or groups of ``group_size``); tensor ``fields`` such as
    ``clipped_weights`` or ``scores`` are converted to float32, other fields passed through."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    n = rewards.shape[0]
    extra = {k: torch.as_tensor(v, dtype=torch.float32) if k != "objectives" else list(v) for k, v in fields.items()}
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
