"""The reward contract: one objective, one float (or ``None``) per completion.

A reward is anything with the TRL signature ``f(prompts, completions, **columns) -> list[float | None]``:
a plain function works unchanged, and :class:`RewardFn` adds a validated config and saved state for
rewards that need them. ``None`` means "not applicable" and is left out of that objective's statistics.

Besides the dataset columns (``answer``, ...), the pipeline passes ``completion_lengths`` (tokens per
completion) and ``training`` (False for evaluation, so stateful rewards do not learn from eval batches).
Unknown keyword arguments must be swallowed (``**columns``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from morl.components import Component

RewardCallable = Callable[..., Sequence[float | None]]


class RewardFn(Component):
    """Base class for configurable or stateful rewards; subclasses implement ``__call__``."""

    family = "reward"

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        raise NotImplementedError


class RewardError(RuntimeError):
    """A reward raised, returned a non-finite value, or the wrong number of values."""


def objective_name(reward: RewardCallable) -> str:
    """The name an objective is logged under: the registry name or the function's name."""
    if isinstance(reward, RewardFn):
        return reward.name or type(reward).__name__.lower()
    return getattr(reward, "__name__", type(reward).__name__)


def score_rewards(
    rewards: Sequence[RewardCallable],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list[Any]],
    *,
    training: bool,
    completion_lengths: list[int] | None = None,
    on_error: str = "raise",
) -> tuple[torch.Tensor, dict[str, int]]:
    """Reward matrix ``[N, M]`` (NaN where not applicable) and per-objective counts of skipped samples.

    ``on_error="raise"`` stops with the objective, prompt and completion in the message;
    ``on_error="skip"`` marks the offending sample not applicable for that objective and counts it.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    n = len(completions)
    lengths = completion_lengths if completion_lengths is not None else [len(c) for c in completions]
    matrix = torch.full((n, len(rewards)), float("nan"), dtype=torch.float32)
    skipped: dict[str, int] = {}
    for m, reward in enumerate(rewards):
        name = objective_name(reward)
        skipped[name] = 0
        try:
            values = list(reward(prompts, completions, completion_lengths=lengths, training=training, **columns))
        except Exception as err:
            values = _score_one_by_one(reward, name, prompts, completions, columns, lengths, training, err, on_error)
        if len(values) != n:
            if on_error == "raise":
                raise RewardError(
                    f"reward {name!r} returned {len(values)} values for {n} completions; "
                    f"first prompt: {prompts[0]!r}, first completion: {completions[0]!r}"
                )
            values = [math.nan] * n
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                if on_error == "raise":
                    raise RewardError(
                        f"reward {name!r} returned {values[i]!r} for sample {i}\n"
                        f"  prompt: {prompts[i]!r}\n  completion: {completions[i]!r}"
                    )
                skipped[name] += 1
                continue
            matrix[i, m] = value
    return matrix, skipped


def _score_one_by_one(
    reward: RewardCallable,
    name: str,
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list[Any]],
    lengths: list[int],
    training: bool,
    batch_error: Exception,
    on_error: str,
) -> list[float | None]:
    """Find the sample that made a batched reward raise, so the message can show it."""
    values: list[float | None] = []
    for i in range(len(completions)):
        row = {k: [v[i]] for k, v in columns.items()}
        try:
            out = reward([prompts[i]], [completions[i]], completion_lengths=[lengths[i]], training=training, **row)
            values.append(out[0])
        except Exception as err:
            if on_error == "raise":
                raise RewardError(
                    f"reward {name!r} raised {type(err).__name__}: {err}\n"
                    f"  prompt: {prompts[i]!r}\n  completion: {completions[i]!r}"
                ) from err
            values.append(None)
    if on_error == "raise":
        raise RewardError(f"reward {name!r} raised {type(batch_error).__name__}: {batch_error}") from batch_error
    return values
