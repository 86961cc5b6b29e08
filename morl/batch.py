"""The rollout record: P prompts × K sampled completions with their token ids, masks and log-probs.

The rollout backend makes it; the trainer adds its own (and the reference's) log-probs, and the weighting stage
makes the updater's copy with ``rewards`` and ``advantages`` (:class:`morl.stages.Weighted` ``.train``). The other
stages' results live in their own records (:mod:`morl.stages`). Completions of one prompt are contiguous: row ``i``
belongs to group ``i // group_size``, so group statistics are a ``view(P, K)`` away.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
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
    # the updater's view (set by the weighting stage): rewards [N, M], combined and per-objective advantages
    rewards: torch.Tensor | None = None
    objective_advantages: torch.Tensor | None = None  # [N, M], for advantage- and gradient-level weights
    advantages: torch.Tensor | None = None
    # [N, L] the rollout engine's log-probs of the sampled tokens when the engine is not the trainer (vLLM); the
    # trainer's own are ``old_logprobs``, and the algorithm's importance-sampling correction compares the two
    sampling_logprobs: torch.Tensor | None = None
    # data parallelism (morl.distributed): every process holds the whole batch and trains on ``local_rows``
    # (None: all rows); a mini-batch's ``token_share`` is this process's share of the completion tokens of the
    # mini-batch step across processes (1 in one process), used to reduce per-process statistics exactly
    local_rows: slice | None = None
    token_share: float = 1.0

    @classmethod
    def token_free(cls, size: int, group_size: int, device: torch.device | str | None = None) -> Batch:
        """A batch of ``size`` rows that carries only its group structure: what the weighting math reads when it
        runs outside morl's trainer (another trainer's rewards come without morl's rollout)."""
        if size % group_size:
            raise ValueError(f"{size} rows do not split into groups of {group_size}")
        return cls(
            prompts=[""] * size,
            completions=[""] * size,
            columns={},
            group_size=group_size,
            input_ids=torch.zeros(size, 1, dtype=torch.long, device=device),
            attention_mask=torch.ones(size, 1, dtype=torch.long, device=device),
            completion_mask=torch.ones(size, 0, dtype=torch.long, device=device),
            prompt_width=1,
        )

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
        """A row subset (a mini-batch) sharing tensors with this batch. Group structure is kept only when the rows
        are whole consecutive groups in order (a whole batch, a process's share); otherwise ``group_size`` is 1."""
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
            group_size=self.group_size if _whole_groups(idx, self.size, self.group_size) else 1,
            input_ids=take(self.input_ids),
            attention_mask=take(self.attention_mask),
            completion_mask=take(self.completion_mask),
            prompt_width=self.prompt_width,
            old_logprobs=take(self.old_logprobs),
            ref_logprobs=take(self.ref_logprobs),
            rewards=take(self.rewards),
            objective_advantages=take(self.objective_advantages),
            advantages=take(self.advantages),
            sampling_logprobs=take(self.sampling_logprobs),
        )

    def to(self, device: torch.device | str) -> Batch:
        """The same record with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


def _whole_groups(rows: list[int] | slice, size: int, group_size: int) -> bool:
    """Are ``rows`` (indices or a slice of ``range(size)``) whole groups of ``group_size``, consecutive and in order?"""
    if group_size <= 1:
        return False
    if isinstance(rows, slice):
        start, stop, step = rows.indices(size)
        return step == 1 and start % group_size == 0 and (stop - start) % group_size == 0 and stop > start
    if not rows or rows[0] % group_size or len(rows) % group_size:
        return False
    return rows == list(range(rows[0], rows[0] + len(rows)))


def concat_batches(parts: list[Batch], pad_token_id: int) -> Batch:
    """One batch from several with the same group size (e.g. one per process), re-padded to a common width:
    prompts are left-padded to the widest prompt, completions and per-token tensors right-padded with zeros
    (``pad_token_id`` in ``input_ids``). Per-completion and per-row tensors are concatenated; a field set in only
    some parts is dropped (None)."""
    if not parts:
        raise ValueError("concat_batches needs at least one batch")
    width = max(b.prompt_width for b in parts)
    length = max(b.completion_mask.shape[1] for b in parts)

    def prompt_part(b: Batch, x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(x[:, : b.prompt_width], (width - b.prompt_width, 0), value=value)

    def tokens(x: torch.Tensor, value: float = 0) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, length - x.shape[1]), value=value)

    def joined(name: str) -> torch.Tensor | None:
        values = [getattr(b, name) for b in parts]
        if any(v is None for v in values):
            return None
        return torch.cat([tokens(v) if v.dim() == 2 else v for v in values])

    first = parts[0]
    return Batch(
        prompts=[p for b in parts for p in b.prompts],
        completions=[c for b in parts for c in b.completions],
        columns={key: [v for b in parts for v in b.columns[key]] for key in first.columns},
        group_size=first.group_size,
        input_ids=torch.cat(
            [
                torch.cat([prompt_part(b, b.input_ids, pad_token_id), tokens(b.completion_ids, pad_token_id)], 1)
                for b in parts
            ]
        ),
        attention_mask=torch.cat(
            [
                torch.cat([prompt_part(b, b.attention_mask, 0), tokens(b.attention_mask[:, b.prompt_width :])], 1)
                for b in parts
            ]
        ),
        completion_mask=torch.cat([tokens(b.completion_mask) for b in parts]),
        prompt_width=width,
        **{
            name: joined(name)
            for name in (
                "old_logprobs",
                "ref_logprobs",
                "rewards",
                "objective_advantages",
                "advantages",
                "sampling_logprobs",
            )
        },
    )
