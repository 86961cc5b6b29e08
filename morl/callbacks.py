"""Callbacks: code that watches a fit (diagnostics, progress, user hooks) through typed contexts.

A callback never sees the pipeline: it gets a :class:`FitContext` once (where the run lives, the objectives, the
policy and the loss it may differentiate), a :class:`ScoredContext` when a fresh batch is sampled and scored, before
the policy trains on it, and a :class:`StepContext` after every step (the step's records and its metrics, to which it
may add). What it needs computed it declares in ``needs`` (:class:`morl.stages.Need`).

Example:
    >>> class PrintLoss(Callback):
    ...     def on_step_end(self, ctx: StepContext) -> None:
    ...         print(ctx.step, ctx.metrics.get("loss"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from morl.algos import PolicyAlgo
    from morl.policy import Policy
    from morl.stages import Need, Scored, Updated


@dataclass(frozen=True)
class FitContext:
    """What a callback may know about the fit it watches."""

    run_dir: Path | None  # None for steps run outside fit(): nothing is written
    objectives: tuple[str, ...]
    policy: Policy
    algo: PolicyAlgo
    start_step: int  # 0, or the step a resumed fit continues from
    is_main: bool  # process 0 of a fit writes files; the others (and steps outside fit) keep state silently
    segment: int = 0  # the manifest segment this fit writes (rows and events are tagged with it)


@dataclass
class StepContext:
    """One finished training step: its records (rollout -> scored -> weighted -> updated) and metrics.

    ``metrics`` is the row that goes to ``metrics.jsonl``; a callback adds its own keys to it.
    """

    fit: FitContext
    step: int
    record: Updated
    metrics: dict[str, float]


@dataclass(frozen=True)
class ScoredContext:
    """A fresh batch, sampled by the current policy and scored, that no update has trained on yet.

    The policy still holds the parameters that sampled it: the one moment a callback can measure held-out
    quantities (the forecast of :mod:`morl.forecast`) without extra generation.
    """

    fit: FitContext
    step: int  # the step about to train on this batch (1 for the first)
    scored: Scored
    # the interference forecast's (change, z) when the step measured it on this batch (morl.forecast; its one owner
    # is the training step, at the cadence of whoever declared Need.FORECAST)
    forecast: tuple[np.ndarray, np.ndarray] | None = None


@runtime_checkable
class Stateful(Protocol):
    """Something whose state a checkpoint saves and a resume restores (JSON-able)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class TensorStateful(Protocol):
    """Something whose state includes tensors too large for JSON (a parameter snapshot); a checkpoint stores them
    in ``state_tensors.safetensors`` beside the JSON state."""

    def tensor_state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_tensor_state_dict(self, tensors: dict[str, torch.Tensor]) -> None: ...


class Callback:
    """Hooks around a fit; every method is optional. A stateful callback also implements :class:`Stateful`."""

    needs: frozenset[Need] = frozenset()

    def on_fit_start(self, ctx: FitContext) -> None: ...

    def on_batch_scored(self, ctx: ScoredContext) -> None:
        """Called once per step before the update; it must leave the policy's parameters as it found them."""

    def on_step_end(self, ctx: StepContext) -> None: ...

    def on_fit_end(self, ctx: FitContext, history: list[dict[str, Any]]) -> None: ...
