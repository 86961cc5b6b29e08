"""Policy algorithms: advantages + rollouts -> loss (:mod:`morl.algos.loss`) -> updates (:mod:`morl.algos.updater`).

``reinforce``: ``L = -mean_tokens(A · ρ)`` with ``ρ = π_θ/π_old`` (= 1 on-policy, so the gradient is
``-A ∇log π``), no clipping (Williams 1992).

``grpo``: the clipped surrogate ``L = -mean_tokens(min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A)) + β·KL_k3 - α·H``
(Shao et al. 2024, https://arxiv.org/abs/2402.03300; ε_high as in DAPO), several PPO epochs over
mini-batches, k3 KL estimator to a frozen reference (Schulman, http://joschu.net/blog/kl-approx.html).

Both take TRL's loss axes as config fields — ``loss_type`` (``grpo``, ``bnpo``/``dapo``, ``dr_grpo``; default
``bnpo``, the token mean over the mini-batch), ``importance_sampling_level`` (``token``, or GSPO's ``sequence``),
``kl_estimator`` (``k1``, ``k3``) and ``kl_in`` (``loss``, or ``reward``: the step subtracts ``β·KL`` from the
scores, see :meth:`PolicyAlgo.kl_reward_penalty`) — so GSPO, Dr. GRPO and DAPO are settings, not classes.

:meth:`PolicyAlgo.loss` is the loss for any advantages on a (mini-)batch with its own statistics
(:class:`~morl.algos.loss.LossOutput`: ratio, unclipped mask, normaliser), so gradient-level weightings build one
loss per objective, and :meth:`PolicyAlgo.clipped_advantage_weight` (the covariance law's ``w = A·ρ·1[not
clipped]``) reads the same ratio and mask. :meth:`PolicyAlgo.update` runs the one
:class:`~morl.algos.updater.Updater`, which weights micro-batches and processes by their share of the loss's
normaliser, so micro-batching and data parallelism leave the gradient unchanged for every ``loss_type``.

When the rollout engine is not the trainer (vLLM: the batch has ``sampling_logprobs``), the policy term of each
token is multiplied by a capped importance ratio ``π_old / π_engine`` (``importance_correction``, see
:mod:`morl.algos.importance`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field, model_validator

from morl.algos.importance import ImportanceCorrection, importance_weights
from morl.algos.loss import (
    ImportanceSamplingLevel,
    KLEstimator,
    KLIn,
    LossOutput,
    LossType,
    PolicyLoss,
    check_kl_placement,
    k3_kl,
    masked_mean,
    sequence_kl,
    unclipped_mask,
)
from morl.algos.updater import Updater
from morl.batch import Batch
from morl.components import Component, ComponentConfig
from morl.policy import Policy

# k3_kl, masked_mean and unclipped_mask live in morl.algos.loss; re-exported for existing importers
__all__ = [
    "GRPO",
    "LossCombiner",
    "PolicyAlgo",
    "PolicyAlgoConfig",
    "Reinforce",
    "k3_kl",
    "masked_mean",
    "unclipped_mask",
]

# (policy, mini-batch, algorithm) -> (loss to backpropagate, statistics); lets gradient-level controllers combine
# per-objective losses built with :meth:`PolicyAlgo.loss`
LossCombiner = Callable[[Policy, Batch, "PolicyAlgo"], tuple[torch.Tensor, dict[str, float]]]


class PolicyAlgoConfig(ComponentConfig):
    epochs: int = Field(1, ge=1, description="passes over each rollout batch (PPO epochs); >1 reuses it off-policy")
    minibatches: int = Field(1, ge=1, description="optimiser steps per epoch, each on an equal share of the batch")
    loss_type: LossType = Field(
        "bnpo",
        description="aggregation of token losses (TRL's loss_type): grpo = mean of sequence means; bnpo = dapo = "
        "token mean over the mini-batch step; dr_grpo = token sum / (sequences × max_completion_length)",
    )
    max_completion_length: int | None = Field(
        None,
        ge=1,
        description="L_max of loss_type dr_grpo; None: the rollout's max_new_tokens (its one home; the batch width "
        "when the algorithm runs without a rollout)",
    )
    importance_sampling_level: ImportanceSamplingLevel = Field(
        "token",
        description="token: one ratio per token (GRPO); sequence: GSPO's exp(mean log-ratio) per completion",
    )
    kl_coef: float = Field(0.0, ge=0, description="β of the KL penalty to a frozen reference model; >0 loads one")
    kl_estimator: KLEstimator = Field(
        "k3", description="per-token KL estimator: k1 = log π/π_ref, k3 = exp(r) - r - 1 with r = log π_ref/π"
    )
    kl_in: KLIn = Field(
        "loss", description="where β·KL acts: loss (a term per token) or reward (subtracted from each score)"
    )
    entropy_coef: float = Field(0.0, ge=0, description="α of the entropy bonus; >0 against entropy collapse")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm to this; None: no clip")
    temperature: float | None = Field(
        None,
        gt=0,
        description="softmax temperature of the trained log-probs; None: the rollout's sampling temperature (its one "
        "home: set it there); 1 when the algorithm runs without a rollout",
    )
    log_entropy: bool = Field(True, description="log token entropy even when entropy_coef is 0 (small extra cost)")
    micro_batch_size: int | None = Field(
        None, ge=1, description="rows per forward/backward pass (gradient accumulation); None: a whole mini-batch"
    )
    importance_correction: ImportanceCorrection = Field(
        "token_truncate", description="rollout engine/trainer mismatch correction, when the engine is not the trainer"
    )
    importance_cap: float = Field(2.0, gt=0, description="cap C of the importance ratio (truncated or masked above)")

    @model_validator(mode="after")
    def _kl_in_the_loss_has_a_gradient(self) -> PolicyAlgoConfig:
        """k1 in the loss trains nothing: see :func:`~morl.algos.loss.check_kl_placement`."""
        check_kl_placement(self.kl_coef, self.kl_estimator, self.kl_in)
        return self


class PolicyAlgo(Component):
    """A policy loss (TRL's axes, :class:`~morl.algos.loss.PolicyLoss`) and the :class:`~morl.algos.updater.Updater`
    that minimises it."""

    family = "algo"
    Config = PolicyAlgoConfig

    @property
    def clip_range(self) -> tuple[float, float] | None:
        """``(ε_low, ε_high)``, or None for an unclipped objective."""
        return None

    @property
    def temperature(self) -> float:
        """The temperature the log-probs are taken at (``config.temperature``, filled from the rollout's)."""
        return 1.0 if self.config.temperature is None else self.config.temperature

    def follow_rollout(self, temperature: float | None, max_new_tokens: int | None) -> None:
        """Take the sampling settings from the rollout, their one home, where this config leaves them unset."""
        update = {}
        if self.config.temperature is None and temperature is not None:
            update["temperature"] = temperature
        if self.config.max_completion_length is None and max_new_tokens is not None:
            update["max_completion_length"] = max_new_tokens
        if update:
            self.config = self.config.model_copy(update=update)

    @property
    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0

    @property
    def policy_loss(self) -> PolicyLoss:
        """The loss function of tensors this algorithm minimises."""
        cfg = self.config
        return PolicyLoss(
            loss_type=cfg.loss_type,
            importance_sampling_level=cfg.importance_sampling_level,
            clip=self.clip_range,
            kl_coef=cfg.kl_coef,
            kl_estimator=cfg.kl_estimator,
            kl_in=cfg.kl_in,
            entropy_coef=cfg.entropy_coef,
            max_completion_length=cfg.max_completion_length,
        )

    @property
    def updater(self) -> Updater:
        cfg = self.config
        return Updater(cfg.epochs, cfg.minibatches, cfg.micro_batch_size, cfg.max_grad_norm)

    def loss(
        self,
        logp: torch.Tensor,
        batch: Batch,
        advantages: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
    ) -> LossOutput:
        """The loss of these rows for ``advantages`` [n] (default: ``batch.advantages``) and its statistics.

        ``logp`` [n, L] are the log-probs under the policy being trained; the sampling, reference and engine
        log-probs come from the batch.
        """
        advantages = batch.advantages if advantages is None else advantages
        old = batch.old_logprobs if batch.old_logprobs is not None else logp.detach()
        return self.policy_loss(
            logp,
            advantages,
            batch.completion_mask,
            old_logp=old,
            ref_logp=batch.ref_logprobs,
            entropy=entropy,
            importance=self._importance(old, batch),
        )

    def surrogate(
        self, logp: torch.Tensor, batch: Batch, advantages: torch.Tensor, entropy: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, statistics)`` of :meth:`loss`, for callers of the former two-value form."""
        out = self.loss(logp, batch, advantages, entropy)
        return out.loss, out.stats

    def clipped_advantage_weight(
        self, new_logp: torch.Tensor, batch: Batch, out: LossOutput | None = None
    ) -> torch.Tensor:
        """Completion-level ``w = mean_tokens(A · ρ · c · 1[not clipped])`` under the updated policy ``new_logp``
        (``c``: the engine/trainer importance correction), from the loss's own ratio and unclipped mask; pass the
        loss's output ``out`` when it is already at hand (``self.loss(new_logp, batch)``) to compute it once."""
        out = out if out is not None else self.loss(new_logp, batch)
        adv = batch.advantages.unsqueeze(1).expand_as(out.ratio)
        weight = adv * out.ratio
        if out.importance is not None:
            weight = weight * out.importance
        weight = weight * out.unclipped
        return masked_mean(weight, batch.completion_mask, dim=1)

    def kl_reward_penalty(self, batch: Batch) -> torch.Tensor | None:
        """``β · sequence_kl(old, ref)`` [N] to subtract from the scores when ``kl_in: reward``; None otherwise."""
        cfg = self.config
        if cfg.kl_in != "reward" or cfg.kl_coef == 0:
            return None
        if batch.old_logprobs is None or batch.ref_logprobs is None:
            raise ValueError("kl_in: reward needs the batch's old_logprobs and ref_logprobs")
        return cfg.kl_coef * sequence_kl(
            batch.old_logprobs, batch.ref_logprobs, batch.completion_mask, cfg.kl_estimator
        )

    def _importance(self, old_logprobs: torch.Tensor, batch: Batch) -> torch.Tensor | None:
        """Per-token importance weights for an engine/trainer mismatch; None when the trainer sampled."""
        if batch.sampling_logprobs is None or self.config.importance_correction == "none":
            return None
        cfg = self.config
        return importance_weights(
            old_logprobs, batch.sampling_logprobs, batch.completion_mask, cfg.importance_correction, cfg.importance_cap
        )

    def update(
        self,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        batch: Batch,
        combine: LossCombiner | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """Run the epochs × mini-batches of optimiser steps (:meth:`Updater.update`); returns averaged metrics.

        ``combine``, a gradient-level controller's ``combine_losses``, builds each micro-batch's loss instead of
        :meth:`minibatch_loss`; it must aggregate like :meth:`loss` (it does when built from it).
        """
        if combine is None:
            loss_fn = self.minibatch_loss
        else:

            def loss_fn(policy: Policy, mb: Batch) -> tuple[torch.Tensor, dict[str, float]]:
                return combine(policy, mb, self)

        return self.updater.update(policy, optimizer, batch, loss_fn, self.policy_loss.normaliser, generator)

    def logprobs(self, policy: Policy, mb: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropies, when the loss or the logs use them) at this algorithm's temperature."""
        want_entropy = self.config.entropy_coef > 0 or self.config.log_entropy
        return policy.token_logprobs(
            mb.input_ids,
            mb.attention_mask,
            mb.prompt_width,
            self.temperature,
            with_entropy=want_entropy,
            group_size=mb.group_size,
        )

    def minibatch_loss(self, policy: Policy, mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward pass -> this (micro-)batch's loss and statistics."""
        logp, entropy = self.logprobs(policy, mb)
        out = self.loss(logp, mb, mb.advantages, entropy)
        return out.loss, out.stats


class Reinforce(PolicyAlgo):
    """Plain policy gradient: every token's gradient is weighted by its completion's advantage."""

    name = "reinforce"


class GRPO(PolicyAlgo):
    """Clipped surrogate with asymmetric clip range; the paper's GRPO uses ε = 0.2.

    DAPO is ``loss_type: dapo, clip_high: 0.28``; GSPO is ``importance_sampling_level: sequence`` with
    ``clip_low: 3e-4, clip_high: 4e-4``; Dr. GRPO is ``loss_type: dr_grpo`` with an unscaled group-mean advantage.
    """

    name = "grpo"

    class Config(PolicyAlgoConfig):
        clip_low: float = Field(0.2, ge=0, lt=1, description="ε_low: ρ clipped below 1-ε_low for negative advantages")
        clip_high: float = Field(
            0.2, ge=0, description="ε_high: ρ clipped above 1+ε_high for positive advantages; DAPO raises it to 0.28"
        )

    @property
    def clip_range(self) -> tuple[float, float]:
        return (self.config.clip_low, self.config.clip_high)
