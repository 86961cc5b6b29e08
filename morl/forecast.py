"""The interference forecast: each objective's first-order change along the update actually applied, measured on
completions that update never trained on.

For any parameter change ``Δθ`` the policy-gradient theorem gives, to first order,

    ΔJ_m ≈ ⟨∇J_m, Δθ⟩ = E_x E_{y~π(.|x)} [ (r_m(x, y) - b_m(x)) · ⟨∇ log π(y|x), Δθ⟩ ]

the covariance law with the actual change of each completion's log-probability as the signal. The in-batch
covariances of :mod:`morl.diagnostics` take that signal on the batch the update trained on, which makes it
agree with every objective the score rewards there; on a network, where an update also moves the policy on every
other prompt, that in-batch agreement can stay positive while the objective falls. The forecast measures the
same quantity where it is unbiased: every ``every`` steps, ``Δθ`` is the change of the policy over the last
``every`` updates, and the batch is the *next* step's rollout, sampled by the current policy and scored, before
the policy trains on it (no extra generation):

    d_i = log π_{θ+Δθ}(y_i|x_i) - log π_θ(y_i|x_i)     each completion's log-probability change if the next window
                                                       repeats the last one's update, shared by every objective
    f_m = mean_i A_{i,m} d_i,   A_{i,m} = (r_{i,m} - mean_group r_m) / σ_m

``d_i`` is ``⟨∇ log π(y_i|x_i), Δθ⟩`` at ``θ + Δθ/2``, the middle of the next window, to second order in ``Δθ``.
``σ_m`` is the objective's within-prompt spread over the batch, so ``f_m`` is the predicted change of J_m per
window in units of its own spread: forecasts of rewards on different scales compare, and a threshold of 0 means
the same for each (the first-order degradation point). Not-applicable rewards get ``A = 0`` and leave the group
mean and ``σ_m``. ``z_m = f_m / se(f_m)`` (the standard error from the per-prompt means) says how far the sign is
from noise.

Cost per measurement: one forward pass of the batch at ``θ + Δθ``, no backward (``log π_θ`` is the rollout's own
log-probs, which the step already has; a second pass where it has none, or where they are computed in reduced
precision, bfloat16 or TF32, whose rounding is as large as the change measured), plus a copy of the selected
parameters held between measurements, which a checkpoint saves so a resumed run forecasts as an uninterrupted one.

Example:
    >>> adv = group_centred_advantages(torch.tensor([[1.0], [0.0], [1.0], [1.0]]), group_size=2)
    >>> [round(a, 6) for a in adv.squeeze(1).tolist()]  # ±0.5 from group 1's mean; flat group 2 counts in σ = √(0.5/4)
    [1.414214, -1.414214, 0.0, 0.0]
    >>> f, z = forecast_from_changes(adv, torch.tensor([0.2, -0.2, 0.5, 0.1]), group_size=2)
    >>> round(float(f[0]), 4)  # the better completion became likelier: the objective is forecast to rise
    0.1414
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from morl.batch import Batch
from morl.policy import Policy, batch_logprobs
from morl.statistics import select_parameters

if TYPE_CHECKING:
    from morl.algos import PolicyAlgo
    from morl.stages import Scored


def group_centred_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N, M]``: each reward minus its prompt group's mean over the applicable completions, divided by the
    objective's root-mean-square deviation over the batch; 0 where not applicable (NaN) or the batch is flat."""
    r = rewards.double().view(-1, group_size, rewards.shape[1])
    applicable = ~torch.isnan(r)
    count = applicable.sum(dim=1, keepdim=True)
    mean = torch.where(applicable, r, 0.0).sum(dim=1, keepdim=True) / count.clamp_min(1)
    centred = torch.where(applicable, r - mean, 0.0)
    spread = (centred.pow(2).sum(dim=(0, 1)) / applicable.sum(dim=(0, 1)).clamp_min(1)).sqrt()
    scaled = torch.where(spread > 1e-12, centred / spread.clamp_min(1e-12), 0.0)
    return scaled.reshape(rewards.shape)


def forecast_from_changes(
    advantages: torch.Tensor, changes: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f, z)`` per objective: ``f_m = mean_i A_{i,m} d_i`` and its ratio to the standard error over prompts."""
    products = advantages.double() * changes.double().unsqueeze(1)  # [N, M]
    per_prompt = products.view(-1, group_size, products.shape[1]).mean(dim=1)  # [G, M]
    f = per_prompt.mean(dim=0)
    groups = per_prompt.shape[0]
    if groups < 2:
        return f, torch.full_like(f, math.nan)
    se = per_prompt.std(dim=0, unbiased=True) / math.sqrt(groups)
    z = torch.where(se > 0, f / se.clamp_min(1e-300), torch.full_like(f, math.nan))
    return f, z


def sequence_logprobs(policy: Policy, batch: Batch, temperature: float, micro_batch_size: int | None) -> torch.Tensor:
    """``[N]`` log-probability of each completion under the policy's current parameters (no gradient)."""
    return batch_logprobs(policy, batch, temperature, micro_batch_size).sum(dim=1)


def logprob_changes(
    policy: Policy,
    batch: Batch,
    params: Sequence[torch.Tensor],
    start: Sequence[torch.Tensor],
    temperature: float = 1.0,
    micro_batch_size: int | None = None,
    current: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[N]`` ``log π_{θ+Δθ} - log π_θ`` of each completion, ``Δθ = θ - start``: how its log-probability would
    change if the parameters moved once more as they did since they held ``start``.

    ``current`` is ``log π_θ`` of each completion (``[N]``) when the caller has it in full precision
    (:func:`current_logprobs`): the change then costs one forward pass, else two. The parameters are moved to
    ``θ + Δθ`` in place and copied back bit for bit, so the training trajectory is the same with the forecast on or
    off.
    """
    now = sequence_logprobs(policy, batch, temperature, micro_batch_size) if current is None else current
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, old in zip(params, start, strict=True):
                p.add_(p - old)
        ahead = sequence_logprobs(policy, batch, temperature, micro_batch_size)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    return ahead.double() - now.to(ahead.device).double()


def current_logprobs(policy: Policy, batch: Batch) -> torch.Tensor | None:
    """``[N]`` log π_θ of each completion as the batch already holds it (``old_logprobs``, taken by the parameters
    that sampled it), or None where it holds none or the policy computes in reduced precision (bfloat16 weights, or
    float32 matrix products allowed to round like TF32): such a log-prob is rounded by about as much as a window
    changes it, and the sampler's and the forward pass's roundings differ, so the forecast then takes its own pass."""
    full = all(p.dtype in (torch.float32, torch.float64) for p in policy.model.parameters() if p.is_floating_point())
    exact_matmul = torch.get_float32_matmul_precision() == "highest"
    if batch.old_logprobs is None or not full or not exact_matmul:
        return None
    return (batch.old_logprobs * batch.completion_mask).sum(dim=1)


@runtime_checkable
class UsesForecast(Protocol):
    """A component that declares ``Need.FORECAST``: how often the forecast is measured and on which parameters.

    The training step owns the one :class:`ForecastWindow` (a controller's cadence wins over a callback's) and
    measures every ``forecast_every`` steps, on the fresh batch before the update; a controller receives the result
    through ``observe_forecast(change, z)`` before its ``before_update``, a callback on
    :class:`morl.callbacks.ScoredContext`.
    """

    @property
    def forecast_every(self) -> int: ...

    @property
    def forecast_params(self) -> str: ...


class ForecastWindow:
    """Holds the parameters at the start of the current window and measures the forecast at its end.

    A measurement at step ``t`` (a multiple of ``every``, plus 1) uses the change over the ``every`` updates before
    it and the batch step ``t`` is about to train on; the window then starts again from the current parameters.
    State: ``snapshot_step_`` (JSON) and ``snapshot_`` (tensors), both saved in checkpoints.
    """

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1. Found {every}")
        self.every = every
        self.snapshot_: list[torch.Tensor] | None = None
        self.snapshot_step_: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"snapshot_step": self.snapshot_step_} if self.snapshot_ is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshot_step_ = state.get("snapshot_step")

    def tensor_state_dict(self) -> dict[str, torch.Tensor]:
        return {str(i): t for i, t in enumerate(self.snapshot_ or [])}

    def load_tensor_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """The snapshot, on the tensors' device (the caller loads them onto the policy's)."""
        if tensors and self.snapshot_step_ is not None:
            self.snapshot_ = [tensors[str(i)] for i in range(len(tensors))]

    def measure(
        self,
        step: int,
        policy: Policy,
        params: str,
        scored: Scored,
        algo: PolicyAlgo,
        current: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`observe` on a fresh scored batch, the parameters named by ``params`` (``all``, ``last_layers:N`` or
        a regex), log-probs taken as ``algo`` takes them: what every trainer that hosts the forecast calls.
        ``current``: :func:`current_logprobs` where the host vouches that the batch's log-probs are the current
        parameters' (one pass instead of two)."""
        if not self.due(step):
            return None
        selected = select_parameters(policy.model, params)
        return self.observe(
            step,
            policy,
            selected,
            scored.rollout,
            scored.rewards,
            algo.temperature,
            algo.config.micro_batch_size,
            current,
        )

    def due(self, step: int) -> bool:
        """Whether step ``step`` opens a window (and closes the previous one)."""
        return (step - 1) % self.every == 0

    def observe(
        self,
        step: int,
        policy: Policy,
        params: Sequence[torch.Tensor],
        batch: Batch,
        rewards: torch.Tensor,
        temperature: float = 1.0,
        micro_batch_size: int | None = None,
        current: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(f, z)`` per objective when a window closes at this step, else None; opens the next window.
        ``current``: ``log π`` of the batch's completions under ``params`` as they are now, if known."""
        if not self.due(step):
            return None
        result = None
        if self.snapshot_ is not None and self.snapshot_step_ == step - self.every:
            changes = logprob_changes(policy, batch, params, self.snapshot_, temperature, micro_batch_size, current)
            advantages = group_centred_advantages(rewards.to(changes.device), batch.group_size)
            f, z = forecast_from_changes(advantages, changes, batch.group_size)
            result = (f.cpu().numpy(), z.cpu().numpy())
        self.snapshot_ = [p.detach().clone() for p in params]
        self.snapshot_step_ = step
        return result
