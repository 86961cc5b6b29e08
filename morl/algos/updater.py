"""The one optimisation loop: epochs × mini-batches × micro-batches, for any loss that reports its normaliser.

Each epoch shuffles the rows (when there is more than one mini-batch) and splits them into ``minibatches`` equal
shares; each share is one optimiser step. A step's gradient is accumulated over micro-batches of
``micro_batch_size`` rows and, under data parallelism (:mod:`morl.distributed`), over processes, so that it is the
gradient of the loss of the whole mini-batch step:

    loss = Σ_j (n_j / Σ_k n_k) · loss_j

where ``loss_j`` is micro-batch j's own loss (its rows' aggregate) and ``n_j`` its share of the aggregation's
denominator (:func:`morl.algos.loss.loss_normaliser`: completion tokens for a token mean, sequences for a mean of
sequence means, sequences × ``L_max`` for Dr. GRPO), summed over every process's micro-batches
(``all_reduce_sum``). Any split of the rows then gives the same gradient, up to rounding. Logged statistics (token
means) are weighted by each micro-batch's share of the completion tokens instead, so they are token means over the
mini-batch; ``loss`` is weighted like the loss.

Each micro-batch's ``token_share`` is set to this process's share of that micro-step's normaliser, so a
gradient-level controller reduces per-process quantities (``Σ_p share_p · x_p``) to the whole micro-step's.

The gradient is clipped to ``max_grad_norm``; a step whose gradient norm or loss is not finite is skipped (the
optimiser does not step) and logged as ``skipped_nonfinite``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from morl import distributed
from morl.batch import Batch
from morl.policy import Policy

# (policy, micro-batch) -> (its loss, statistics to log); statistics are tensors or floats
MicroBatchLoss = Callable[[Policy, Batch], tuple[torch.Tensor, Mapping[str, torch.Tensor | float]]]
# a completion mask [n, L] -> the loss's denominator contributed by those rows
Normaliser = Callable[[torch.Tensor], float]


_EXTREMES = {"clip_ratio/low_mean": ("clip_ratio/low_min", min), "clip_ratio/high_mean": ("clip_ratio/high_max", max)}


@dataclass(frozen=True)
class Updater:
    """Epochs × mini-batches × micro-batches of optimiser steps with gradient accumulation.

    Example:
        >>> Updater(epochs=2, minibatches=4, micro_batch_size=8)
        Updater(epochs=2, minibatches=4, micro_batch_size=8, max_grad_norm=1.0)
    """

    epochs: int = 1
    minibatches: int = 1
    micro_batch_size: int | None = None
    max_grad_norm: float | None = 1.0

    def update(
        self,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        batch: Batch,
        loss_fn: MicroBatchLoss,
        normaliser: Normaliser,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """Run the epochs × mini-batches of optimiser steps; returns the metrics averaged over the steps.

        Under data parallelism this process trains on ``batch.local_rows``; every process splits its rows into the
        same number of mini-batches, and a mini-batch step is the sum of all processes' contributions.
        """
        policy.model.train()
        rows = torch.arange(batch.size)
        if batch.local_rows is not None:
            rows = rows[batch.local_rows]
        sums: dict[str, float] = {}
        extremes: dict[str, float] = {}  # TRL's clip_ratio/low_min and high_max: over the step's optimizer steps
        count = 0
        for _ in range(self.epochs):
            order = rows[torch.randperm(len(rows), generator=generator)] if self.minibatches > 1 else rows
            for minibatch in order.chunk(self.minibatches):
                for key, value in self.step(policy, optimizer, batch, minibatch, loss_fn, normaliser).items():
                    sums[key] = sums.get(key, 0.0) + value
                    if key in _EXTREMES:
                        name, pick = _EXTREMES[key]
                        extremes[name] = pick(extremes.get(name, value), value)
                count += 1
        policy.model.eval()
        return {key: value / count for key, value in sums.items()} | extremes

    def step(
        self,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        batch: Batch,
        rows: torch.Tensor,
        loss_fn: MicroBatchLoss,
        normaliser: Normaliser,
    ) -> dict[str, float]:
        """One optimiser step on these rows, accumulated over micro-batches and processes (module docstring)."""
        micro = list(rows.split(self.micro_batch_size)) if self.micro_batch_size else [rows]
        masks = [batch.completion_mask[r] for r in micro]
        # [micro-batch, (normaliser, tokens)] of this process, then summed over processes
        local = torch.tensor([[normaliser(m), float(m.sum())] for m in masks], dtype=torch.float64)
        total = distributed.all_reduce_sum(local)
        processes = distributed.world_size()
        norm_total = float(total[:, 0].sum())
        token_total = float(total[:, 1].sum())
        even = 1.0 / (processes * len(micro))  # nothing to normalise by (no tokens anywhere): equal shares
        optimizer.zero_grad(set_to_none=True)
        weighted: dict[str, float] = {}
        for i, part in enumerate(micro):
            mb = batch.select(part)
            mb.token_share = float(local[i, 0] / total[i, 0]) if total[i, 0] > 0 else 1.0 / processes
            loss, stats = loss_fn(policy, mb)
            weight = float(local[i, 0]) / norm_total if norm_total > 0 else even
            token_weight = float(local[i, 1]) / token_total if token_total > 0 else even
            with policy.no_sync(skip=i < len(micro) - 1):
                policy.backward(loss * weight)
            weighted["loss"] = weighted.get("loss", 0.0) + weight * float(loss.detach())
            for key, value in stats.items():
                weighted[key] = weighted.get(key, 0.0) + token_weight * float(value)
        keys = sorted(weighted)
        reduced = distributed.all_reduce_sum(torch.tensor([weighted[k] for k in keys], dtype=torch.float64))
        out = dict(zip(keys, reduced.tolist()))
        grad_norm = policy.clip_grad_norm(self.max_grad_norm)
        if not math.isfinite(grad_norm) or not math.isfinite(out["loss"]):
            optimizer.zero_grad(set_to_none=True)
            out["skipped_nonfinite"] = 1.0
        else:
            optimizer.step()
        out["grad_norm"] = grad_norm
        return out
