"""The records one training step passes along, one per stage, each made by exactly one producer.

    rollout (Batch) --rewards--> Scored --controller + scalarizer + estimator--> Weighted --updater--> Updated

A component reads the record of the stage it works on and returns its result; nothing reaches back upstream and
nothing is filled in later. Every tensor in a record lives on the policy's device (rewards are computed as Python
floats and moved there by the scoring stage), so a controller that wants NumPy calls ``.cpu()`` itself.

What a component wants computed beyond the default path it declares as :class:`Need` members; each member has
one producer, named in its comment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from morl.batch import Batch


class Need(str, Enum):
    """Costly quantities a component may ask for; the step computes only what someone needs."""

    # the completion-level clipped advantage weight under the updated policy (one extra forward pass);
    # producer: the training step, after the update, from the policy loss's own clip statistics
    CLIPPED_WEIGHTS = "clipped_weights"
    # per-objective advantages [N, M] (each objective normalised in its group); producer: the weighting stage
    OBJECTIVE_ADVANTAGES = "objective_advantages"
    # per-objective means on validation prompts before the first and after every update; producer: the Evaluator,
    # called by the training step; the needing controller implements morl.controllers.UsesValidation
    VALIDATION = "validation"
    # whole per-objective policy gradients (gradient-level weightings, gradient diagnostics): a policy whose
    # parameters are sharded across processes cannot give them; producer: the component itself, in the update
    OBJECTIVE_GRADIENTS = "objective_gradients"
    # the interference forecast on the fresh batch before it is trained on (morl.forecast); producer: the training
    # step's forecast stage, one window for everyone; the needing component says its cadence (UsesForecast)
    FORECAST = "forecast"


@dataclass(frozen=True)
class Scored:
    """The rollout with its rewards: ``[N, M]`` on the policy's device, NaN where a reward does not apply."""

    rollout: Batch
    rewards: torch.Tensor
    objectives: tuple[str, ...]
    skipped: dict[str, int] = field(default_factory=dict)  # samples a failing reward was skipped on, by objective

    @classmethod
    def from_rewards(cls, rewards: torch.Tensor, group_size: int, objectives: tuple[str, ...] | list[str]) -> Scored:
        """Rewards ``[N, M]`` of consecutive prompt groups, without tokens: for calling a controller's math from
        another trainer (morl.integrations) or a notebook."""
        rollout = Batch.token_free(rewards.shape[0], group_size, rewards.device)
        return cls(rollout=rollout, rewards=rewards, objectives=tuple(objectives))

    @property
    def group_size(self) -> int:
        return self.rollout.group_size

    @property
    def size(self) -> int:
        return self.rollout.size


@dataclass(frozen=True)
class Weighted:
    """Weights applied where the controller acts; ``train`` is the batch the updater consumes.

    ``scores`` [N] is the scalarised reward (for reward-level methods the training signal, for the others the
    weighted sum, for logging); ``advantages`` [N] the combined advantages; ``objective_advantages`` [N, M] when
    someone needs them.
    """

    scored: Scored
    weights: torch.Tensor
    scores: torch.Tensor
    advantages: torch.Tensor
    objective_advantages: torch.Tensor | None
    train: Batch

    @property
    def rewards(self) -> torch.Tensor:
        return self.scored.rewards

    @property
    def objectives(self) -> tuple[str, ...]:
        return self.scored.objectives

    @property
    def group_size(self) -> int:
        return self.scored.group_size


@dataclass(frozen=True)
class Updated:
    """After the policy update: its statistics and, when needed, the clipped advantage weights [N] under the
    updated policy and the policy loss's clip statistics there (``ratio`` and ``unclipped`` [N, L])."""

    weighted: Weighted
    stats: dict[str, float]
    clipped_weights: torch.Tensor | None = None
    new_ratio: torch.Tensor | None = None
    new_unclipped: torch.Tensor | None = None
    # with the after-update pass beside the next rollout (morl.overlap): the previous step's record, completed in this
    # step with its clipped weights, for whoever logs them (one row late)
    settled: Updated | None = None

    @property
    def scored(self) -> Scored:
        return self.weighted.scored

    @property
    def rollout(self) -> Batch:
        return self.weighted.scored.rollout

    @property
    def rewards(self) -> torch.Tensor:
        return self.weighted.scored.rewards

    @property
    def scores(self) -> torch.Tensor:
        return self.weighted.scores

    @property
    def advantages(self) -> torch.Tensor:
        return self.weighted.advantages

    @property
    def objective_advantages(self) -> torch.Tensor | None:
        return self.weighted.objective_advantages

    @property
    def objectives(self) -> tuple[str, ...]:
        return self.weighted.scored.objectives

    @property
    def group_size(self) -> int:
        return self.weighted.scored.group_size
