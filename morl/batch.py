"""The one record that flows through a training step.

Rollout fills the sequences, rewards fill ``rewards``, the scalarizer ``scores``, the estimator
``advantages``, the algorithm the log-probs and losses, the controller reads what it needs. Nothing
reaches back upstream. Completions of one prompt are contiguous: row ``i`` belongs to group
``i // group_size``, so group statistics are a ``view(P, K)`` away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Batch:
    """P prompts × K completions, flattened to N = P·K rows.

    Shapes: ``input_ids``/``attention_mask`` [N, T] (left-padded prompt of width ``prompt_width``,
    then the completion); ``completion_mask`` and every per-token tensor [N, L] with L = T - prompt_width;
    ``rewards`` [N, M] with NaN for "not applicable"; ``scores`` and ``advantages`` [N].
    """

    prompts: list[str]
    completions: list[str]
    columns: dict[str, list[Any]]
    group_size: int
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_width: int
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    objectives: list[str] = field(default_factory=list)
    scores: torch.Tensor | None = None
    objective_advantages: torch.Tensor | None = None  # [N, M], for advantage- and gradient-level weights
    advantages: torch.Tensor | None = None
    clipped_weights: torch.Tensor | None = None  # [N], completion-level clipped advantage weight (CTWA)
    new_logprobs: torch.Tensor | None = None  # [N, L] under the updated policy, computed with clipped_weights
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.completions)

    @property
    def num_groups(self) -> int:
        return self.size // self.group_size

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(dim=1)

    def grouped(self, values: torch.Tensor) -> torch.Tensor:
        """``[N, ...] -> [P, K, ...]``."""
        return values.view(self.num_groups, self.group_size, *values.shape[1:])

    def select(self, rows: torch.Tensor | slice) -> Batch:
        """A row subset (a mini-batch) sharing tensors with this batch; group structure is not kept."""
        idx = rows if isinstance(rows, slice) else rows.tolist()

        def take(x: Any) -> Any:
            if x is None:
                return None
            if isinstance(x, torch.Tensor):
                return x[rows]
            return [x[i] for i in idx] if not isinstance(idx, slice) else x[idx]

        return Batch(
            prompts=take(self.prompts),
            completions=take(self.completions),
            columns={k: take(v) for k, v in self.columns.items()},
            group_size=1,
            input_ids=take(self.input_ids),
            attention_mask=take(self.attention_mask),
            completion_mask=take(self.completion_mask),
            prompt_width=self.prompt_width,
            old_logprobs=take(self.old_logprobs),
            ref_logprobs=take(self.ref_logprobs),
            rewards=take(self.rewards),
            objectives=self.objectives,
            scores=take(self.scores),
            objective_advantages=take(self.objective_advantages),
            advantages=take(self.advantages),
        )
