"""The reward contract: one objective, one float (or ``None``) per completion.

A reward is anything with the TRL signature ``f(prompts, completions, **columns) -> list[float | None]``:
a plain function works unchanged, and :class:`RewardFn` adds a validated config and saved state for
rewards that need them. ``None`` means "not applicable" and is left out of that objective's statistics.

Besides the dataset columns (``answer``, ...), the pipeline passes ``completion_lengths`` (tokens per
completion) and ``training`` (False for evaluation, so stateful rewards do not learn from eval batches).
Unknown keyword arguments must be swallowed (``**columns``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from morl.components import Component

RewardCallable = Callable[..., Sequence[float | None]]
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class RewardFn(Component):
    """Base class for configurable or stateful rewards; subclasses implement ``__call__``.

    State rule — **don't mutate state before you can fail**: compute and check every value first, then update
    learned state (``count_ += ...``) as the last thing before returning, so that a call that raises leaves the
    state as it was. :func:`score_rewards` enforces this for ``RewardFn`` objects (it restores their learned state
    after a call that raised or whose output it rejected) but cannot for plain functions that keep state in a
    closure. When a batched call raises, each sample is retried alone with ``training=False`` (so nothing is
    learned twice), and under ``on_error="skip"`` the samples that passed are scored once more as one batch in
    training mode, so a stateful reward learns from each training batch exactly once.
    """

    family = "reward"
    # True when a held-out value is relative to the training history (conciseness: below the running mean length),
    # so start and end values are not comparable; tables and reports show mean length for it instead
    moving_target: ClassVar[bool] = False

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        raise NotImplementedError

    def required_columns(self) -> list[str]:
        """Dataset columns every row must have (checked before training, so a missing one fails at once)."""
        return []

    def counters(self) -> dict[str, float]:
        """Running counts to log as ``rewards/{name}/{counter}`` (e.g. answer-checker timeouts); default none."""
        return {}


class RewardError(RuntimeError):
    """A reward raised, returned a non-finite value, or the wrong number of values."""


def is_moving_target(reward: RewardCallable) -> bool:
    """Plain functions are not moving targets; :class:`RewardFn` subclasses say so with ``moving_target``."""
    return isinstance(reward, RewardFn) and reward.moving_target


def objective_name(reward: RewardCallable) -> str:
    """The name an objective is logged under: the registry name or the function's name."""
    if isinstance(reward, RewardFn):
        return reward.name or type(reward).__name__.lower()
    return getattr(reward, "__name__", type(reward).__name__)


def check_columns(rewards: Sequence[RewardCallable], rows: list[dict[str, Any]], split: str = "train") -> None:
    """Raise :class:`morl.data.DataError` naming the first row without a column that a reward needs."""
    from morl.data import DataError

    for reward in rewards:
        needed = reward.required_columns() if isinstance(reward, RewardFn) else []
        for column in needed:
            for i, row in enumerate(rows):
                if column not in row:
                    raise DataError(
                        f"{split} row {i} has no {column!r} column, which reward {objective_name(reward)!r} needs; "
                        f"columns present: {sorted(row)}"
                    )


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
    Offending: the reward raised on it, or returned a non-finite value or a non-number for it; a reward that
    returns the wrong number of values (or not a list) offends on every sample of the batch.
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
        before = _learned_state(reward)
        try:
            out = reward(prompts, completions, completion_lengths=lengths, training=training, **columns)
        except Exception as err:
            _restore(reward, before)
            values = _score_one_by_one(reward, name, prompts, completions, columns, lengths, training, err, on_error)
        else:
            values = _as_list(out)
            if values is None or len(values) != n:
                _restore(reward, before)  # its output is rejected, so is what it learned from the batch
                got = f"{len(values)} values" if values is not None else f"a {type(out).__name__}"
                if on_error == "raise":
                    raise RewardError(
                        f"reward {name!r} returned {got} for {n} completions (expected a list of {n}); "
                        f"first prompt: {_show(prompts[0]) if n else None}, "
                        f"first completion: {_show(completions[0]) if n else None}"
                    )
                values = [math.nan] * n
        for i, value in enumerate(values):
            if value is None:
                continue
            number = _as_float(value)
            if not abs(number) <= _FLOAT32_MAX:  # NaN, inf, or a float that would overflow the float32 matrix
                if on_error == "raise":
                    raise RewardError(
                        f"reward {name!r} returned {value!r} for sample {i} (a {type(value).__name__}; "
                        f"expected a finite float32 number or None)\n  prompt: {_show(prompts[i])}\n"
                        f"  completion: {_show(completions[i])}"
                    )
                skipped[name] += 1
                continue
            matrix[i, m] = number
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
) -> list[Any]:
    """After a batched call raised: find the samples that make it raise (NaN for them), score the others."""
    values: list[Any] = []
    before = _learned_state(reward)
    for i in range(len(completions)):
        row = {k: [v[i]] for k, v in columns.items()}
        try:
            # evaluation mode: a stateful reward must not learn from each sample and then from the batch again
            out = reward([prompts[i]], [completions[i]], completion_lengths=[lengths[i]], training=False, **row)
            single = _as_list(out)
            values.append(single[0] if single is not None and len(single) == 1 else math.nan)
        except Exception as err:
            _restore(reward, before)
            if on_error == "raise":
                raise RewardError(
                    f"reward {name!r} raised {type(err).__name__}: {err}\n"
                    f"  prompt: {_show(prompts[i])}\n  completion: {_show(completions[i])}"
                ) from err
            values.append(math.nan)
    if on_error == "raise":
        raise RewardError(
            f"reward {name!r} raised {type(batch_error).__name__}: {batch_error} on a batch of {len(completions)}, "
            "but on no sample alone"
        ) from batch_error
    good = [i for i, v in enumerate(values) if not (isinstance(v, float) and math.isnan(v))]
    if training and good:  # the passing samples as one training batch, so the reward learns from them once
        try:
            out = _as_list(
                reward(
                    [prompts[i] for i in good],
                    [completions[i] for i in good],
                    completion_lengths=[lengths[i] for i in good],
                    training=True,
                    **{k: [v[i] for i in good] for k, v in columns.items()},
                )
            )
        except Exception:
            out = None
        if out is not None and len(out) == len(good):
            for j, i in enumerate(good):
                values[i] = out[j]
        else:  # keep the evaluation-mode values; the state learns nothing from this batch
            _restore(reward, before)
    return values


def _as_list(out: Any) -> list[Any] | None:
    """A reward's output as a list, or None if it is not a sequence of values."""
    if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__iter__"):
        return None
    if isinstance(out, torch.Tensor) and out.dim() == 0:
        return None
    return list(out)


def _as_float(value: Any) -> float:
    """A number (int, float, bool, numpy or 0-d tensor) as float; NaN for anything else (text, lists, ...)."""
    if isinstance(value, (str, bytes)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor with several elements
        return math.nan


def _learned_state(reward: Any) -> dict[str, Any] | None:
    """A deep copy of a RewardFn's learned state (trailing-underscore attributes), to undo a failed call."""
    if not isinstance(reward, Component):
        return None
    return {k: copy.deepcopy(v) for k, v in vars(reward).items() if k.endswith("_") and not k.startswith("_")}


def _restore(reward: Any, state: dict[str, Any] | None) -> None:
    if state is None:
        return
    for key in [k for k in vars(reward) if k.endswith("_") and not k.startswith("_") and k not in state]:
        delattr(reward, key)
    for key, value in state.items():
        setattr(reward, key, copy.deepcopy(value))


def _show(text: Any, limit: int = 500) -> str:
    """``repr`` of a prompt or completion, cut to ``limit`` characters so a 100k-character completion stays legible."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(str(text))} characters)"
