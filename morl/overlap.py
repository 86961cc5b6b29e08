"""CTWA's after-update pass beside the next rollout (``train.overlap_after_update``).

A controller that needs the clipped advantage weights under the updated policy (CTWA) costs one no-grad forward
pass of the batch after each update. Nothing needs its result until the next step weighs its batch, and the next
rollout only reads the parameters, so the pass can run in a helper process (:class:`morl.side_process.LogprobProcess`)
on a spare CPU core while this process samples: the controller's ``after_update`` for step t then runs in step t+1,
after its rollout, before its weighting. The weights, and so training, are the same as without the overlap (the pass
is the same function on the same parameters); what moves is where the after-update quantities are logged: CTWA's
``ctwa/*`` metrics and the diagnostics' ``cov|corr/clipped_weight/*`` and ``clip/removed_mass|token_fraction`` appear
in the next step's row (the completed record rides on that step's as ``Updated.settled``), and the in-batch alarm
watches them there; the last update's are not logged.

Every step of a fit defers alike, the steps before the helper is up included (their pass runs in this process at the
end of the step, as without the overlap), so the rows keep one meaning through the run. A checkpoint or a stop settles
the pending pass first: it belongs to the step the checkpoint holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from morl import distributed
from morl.side_process import LogprobProcess
from morl.stages import Need

if TYPE_CHECKING:
    from morl.batch import Batch
    from morl.controllers.base import WeightController
    from morl.policy import Policy
    from morl.stages import Updated, Weighted

__all__ = ["AfterUpdateOverlap", "overlap_reason"]

#: ``(weighted, stats, batch, log-probs or None) -> Updated``: the update's complete record from the helper's log-probs,
#: or from the same pass in this process where there are none.
Complete = Callable[["Weighted", dict[str, float], "Batch", "torch.Tensor | None"], "Updated"]


@dataclass
class _Pass:
    weighted: Weighted
    stats: dict[str, float]
    batch: Batch
    record: Updated | None = None


class AfterUpdateOverlap:
    """The last update's after-update pass, running in a helper process, and the controller's learning from it."""

    def __init__(self, policy: Policy, complete: Complete) -> None:
        self.process = LogprobProcess(policy)
        self._complete = complete
        self._pending: _Pass | None = None  # started at the end of the last step

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def start(
        self, weighted: Weighted, stats: dict[str, float], batch: Batch, temperature: float, rows: int | None
    ) -> None:
        """At the end of a step: the pass on the updated parameters starts in the helper (or runs here, now, while
        the helper is not up)."""
        pending = _Pass(weighted, stats, batch)
        if not self.process.submit(batch, temperature, rows):  # the helper is not up (or failed)
            pending.record = self._complete(weighted, stats, batch, None)
        self._pending = pending

    def settle(self, controller: WeightController) -> Updated | None:
        """The controller learns from the pending pass (waiting for it); nothing when none is pending. A step calls it
        just before its point of no return, and a stop before that point puts the step's parts back and calls it again:
        the pass belongs to the step before."""
        pending = self._pending
        if pending is None:
            return None
        if pending.record is None:
            logp = self.process.result()  # None if the helper failed: the parameters are still the ones it read
            pending.record = self._complete(pending.weighted, pending.stats, pending.batch, logp)
        controller.after_update(pending.record)
        self._pending = None  # only now: a stop in between puts the controller back and settles again
        return pending.record

    def close(self) -> None:
        self.process.close()


def overlap_reason(
    setting: bool | str, controller: WeightController, callbacks: Sequence[Any], policy: Policy
) -> str | None:
    """Why the after-update pass will not run in a helper process, or None."""
    if setting is False:
        return "train.overlap_after_update is false"
    if Need.CLIPPED_WEIGHTS not in controller.needs:
        return "the controller takes no after-update pass"
    if any(Need.CLIPPED_WEIGHTS in cb.needs for cb in callbacks):
        return "a callback (diagnostics clipped_weights: true) reads the clipped weights at the end of each step"
    if policy.device.type != "cpu" or policy.sharded or distributed.is_distributed():
        return "it runs a policy on the CPU in one process only"
    if setting == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if torch.get_num_threads() >= cores:
            return f"no spare core (torch uses {torch.get_num_threads()} threads on {cores} cores)"
    return None
