"""The base of Gram-space weightings: the mini-batch loss ``Σ_m w_m L_m + regularisers`` with ``w`` from the M×M
Gram matrix of the per-objective policy gradients.

The losses, the Gram matrix and the parameter selection are shared with the diagnostics and live in
:mod:`morl.statistics`; this module holds what only gradient-level methods use (:class:`GramWeighting`,
:func:`reward_gaps`).

Cost per mini-batch: one forward pass, M extra backward passes (or one vmapped backward with ``batched``) and
M gradient copies of the chosen parameters in memory. ``params: all`` is exact; ``last_layers:N`` or a regex
computes G on fewer parameters (cheaper, and memory ``M × |subset|``) and approximates the full Gram matrix.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator

from morl import distributed
from morl.batch import Batch
from morl.components import ComponentConfig
from morl.controllers.base import GradientLevel
from morl.statistics import objective_gram, objective_terms, select_parameters

if TYPE_CHECKING:
    from morl.algos import PolicyAlgo
    from morl.policy import Policy


def reward_gaps(minibatch: Batch, reward_max: float) -> np.ndarray:
    """A positive loss per objective, ``reward_max - mean r_m`` (NaN rewards skipped), floored at 1e-3.

    Methods that divide by a loss (GradNorm's ``L/L0``, MGDA's loss normalisation) need it positive; the
    policy-gradient surrogate is near 0 on-policy (advantages are centred) and can be negative.
    """
    rewards = minibatch.rewards.double().cpu()
    valid = ~torch.isnan(rewards)
    # sums and counts over every process's rows of the mini-batch step (morl.distributed; local in one process)
    totals = distributed.all_reduce_sum(torch.stack([torch.where(valid, rewards, 0.0).sum(0), valid.sum(0).double()]))
    means = (totals[0] / totals[1]).nan_to_num(reward_max).numpy()
    return np.maximum(reward_max - means, 1e-3)


class GramConfig(ComponentConfig):
    params: str = Field(
        "all", description="parameters of the Gram matrix: 'all' (exact), 'last_layers:N' or a name regex (cheaper)"
    )
    # on the 138k-parameter TinyMath model (CPU) M separate passes are faster (RESULTS.md)
    batched: bool = Field(False, description="one vmapped backward pass for the M objectives instead of M passes")

    @field_validator("params")
    @classmethod
    def _check_params(cls, spec: str) -> str:
        if spec == "all":
            return spec
        if spec.startswith("last_layers:"):
            count = spec.split(":", 1)[1]
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"last_layers:N needs a positive integer N, got {spec!r}")
            return spec
        try:
            re.compile(spec)
        except re.error as err:
            raise ValueError(f"'all', 'last_layers:N' or a regular expression; {spec!r} is not one ({err})") from None
        return spec


class GramWeighting(GradientLevel):
    """Base of gradient-level controllers: losses -> Gram matrix -> ``weights_from_gram`` -> ``Σ w_m L_m``.

    Subclasses implement :meth:`weights_from_gram` (state such as ``weights_`` or ``L0_`` lives on the
    controller; the math it calls is a pure function of the Gram matrix, as torchjd shapes it). This wrapper owns
    the data: it computes the Gram matrix, the losses and the reward gaps, and does every collective across
    processes, so the weighting never sees the model, the batch or the process group. Config: ``params`` (which
    parameters the Gram matrix is computed on) and ``batched`` (one vmapped backward instead of M).
    """

    Config = GramConfig
    # methods whose weights depend on training progress (MGDA's loss normalisations, GradNorm) read the positive
    # per-objective losses ``reward_max - mean r_m`` (:func:`reward_gaps`); their config has ``reward_max``
    uses_reward_gaps: ClassVar[bool] = False

    def initial_state(self, objectives: list[str]) -> None:
        m = len(objectives)
        self.weights_ = np.full(m, 1.0 / m if self.normalization == "simplex" else 1.0)

    def weights(self) -> torch.Tensor:
        return torch.as_tensor(self.weights_, dtype=torch.float32)

    def weights_from_gram(self, gram: np.ndarray, losses: np.ndarray, gaps: np.ndarray | None) -> np.ndarray:
        """Weights for this mini-batch's losses from the Gram matrix [M, M], the detached losses [M] and, for
        methods with ``uses_reward_gaps``, the reward gaps [M] (else None)."""
        raise NotImplementedError

    def combine_losses(self, policy: Policy, minibatch: Batch, algo: PolicyAlgo) -> tuple[torch.Tensor, dict]:
        losses, regularizer, stats = objective_terms(policy, minibatch, algo)
        params = select_parameters(policy.model, self.config.params)
        gram, grads = objective_gram(losses, params, self.config.batched)
        detached = torch.stack([loss.detach() for loss in losses]).double().cpu()
        # under data parallelism: the Gram matrix of the gradients of the whole micro-step's loss (token_share is
        # this process's share of the loss's normaliser, set by the updater)
        if distributed.is_distributed():
            grads = distributed.all_reduce_sum(grads * minibatch.token_share)
            gram = (grads @ grads.T).double()
            detached = distributed.all_reduce_sum(detached * minibatch.token_share)
        detached = detached.numpy()
        gaps = reward_gaps(minibatch, self.config.reward_max) if self.uses_reward_gaps else None
        weights = np.asarray(self.weights_from_gram(gram.cpu().numpy(), detached, gaps), dtype=float)
        loss = sum(float(w) * term for w, term in zip(weights, losses)) + regularizer
        return loss, stats
