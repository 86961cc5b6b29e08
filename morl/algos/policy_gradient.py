"""Policy algorithms: advantages + rollouts -> loss -> parameter update.

``reinforce``: ``L = -mean_tokens(A · ρ)`` with ``ρ = π_θ/π_old`` (= 1 on-policy, so the gradient is
``-A ∇log π``), no clipping (Williams 1992).

``grpo``: the clipped surrogate ``L = -mean_tokens(min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A)) + β·KL_k3 - α·H``
(Shao et al. 2024, https://arxiv.org/abs/2402.03300; ε_high as in DAPO), several PPO epochs over
mini-batches, token-mean loss, k3 KL estimator to a frozen reference (Schulman, http://joschu.net/blog/kl-approx.html).

Both expose :meth:`surrogate` (the loss for any advantages, so gradient-level weightings can build one loss
per objective) and :meth:`clipped_advantage_weight` (the covariance law's ``w = A·ρ·1[not clipped]``).

When the rollout engine is not the trainer (vLLM: the batch has ``sampling_logprobs``), the policy term of each
token is multiplied by a capped importance ratio ``π_old / π_engine`` (``importance_correction``, see
:mod:`morl.algos.importance`). ``micro_batch_size`` accumulates each mini-batch's gradient over micro-batches,
weighting each by its share of the mini-batch's completion tokens, so micro-batching and data parallelism
(:mod:`morl.distributed`) leave the gradient of the token-mean loss unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pydantic import Field

from morl import distributed
from morl.algos.importance import ImportanceCorrection, importance_weights
from morl.batch import Batch
from morl.components import Component, ComponentConfig
from morl.policy import Policy

# (policy, mini-batch) -> loss to backpropagate; lets gradient-level controllers combine objectives.
LossCombiner = Callable[[Policy, Batch, "PolicyAlgo"], tuple[torch.Tensor, dict[str, float]]]


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ || π_ref): ``exp(r) - r - 1`` with ``r = log π_ref - log π_θ``.

    Unbiased and always non-negative. Example: equal policies give 0.
        >>> k3_kl(torch.tensor([-1.0]), torch.tensor([-1.0]))
        tensor([0.])
    """
    r = ref_logp - logp
    return torch.exp(r) - r - 1.0


def unclipped_mask(ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """1 where the clipped surrogate still passes gradient: not (A>0 and ρ>1+ε_h) and not (A<0 and ρ<1-ε_l)."""
    clipped_high = (advantages > 0) & (ratio > 1.0 + clip_high)
    clipped_low = (advantages < 0) & (ratio < 1.0 - clip_low)
    return ~(clipped_high | clipped_low)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp_min(1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


class PolicyAlgoConfig(ComponentConfig):
    epochs: int = Field(1, ge=1, description="passes over each rollout batch (PPO epochs); >1 reuses it off-policy")
    minibatches: int = Field(1, ge=1, description="optimiser steps per epoch, each on an equal share of the batch")
    kl_coef: float = Field(0.0, ge=0, description="β of the k3 KL penalty to a frozen reference model; >0 loads one")
    entropy_coef: float = Field(0.0, ge=0, description="α of the token-mean entropy bonus; >0 against entropy collapse")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm to this; None: no clip")
    temperature: float = Field(
        1.0, gt=0, description="softmax temperature of the trained log-probs; match the rollout's sampling temperature"
    )
    log_entropy: bool = Field(True, description="log token entropy even when entropy_coef is 0 (small extra cost)")
    micro_batch_size: int | None = Field(
        None, ge=1, description="rows per forward/backward pass (gradient accumulation); None: a whole mini-batch"
    )
    importance_correction: ImportanceCorrection = Field(
        "token_truncate", description="rollout engine/trainer mismatch correction, when the engine is not the trainer"
    )
    importance_cap: float = Field(2.0, gt=0, description="cap C of the importance ratio (truncated or masked above)")


class PolicyAlgo(Component):
    family = "algo"
    Config = PolicyAlgoConfig

    @property
    def clip_range(self) -> tuple[float, float] | None:
        """``(ε_low, ε_high)``, or None for an unclipped objective."""
        return None

    @property
    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0

    def surrogate(
        self, logp: torch.Tensor, batch: Batch, advantages: torch.Tensor, entropy: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token-mean loss for ``advantages`` [n] on a (mini-)batch, and its per-token statistics."""
        mask = batch.completion_mask
        old = batch.old_logprobs if batch.old_logprobs is not None else logp.detach()
        ratio = torch.exp(logp - old)
        adv = advantages.unsqueeze(1)
        per_token = ratio * adv
        stats: dict[str, torch.Tensor] = {}
        if self.clip_range is not None:
            low, high = self.clip_range
            clipped = torch.clamp(ratio, 1.0 - low, 1.0 + high) * adv
            per_token = torch.minimum(per_token, clipped)
            clipped_low = (ratio < 1 - low) & (adv < 0)
            clipped_high = (ratio > 1 + high) & (adv > 0)
            stats["clip_ratio/low_mean"] = masked_mean(clipped_low.float(), mask)
            stats["clip_ratio/high_mean"] = masked_mean(clipped_high.float(), mask)
            stats["clip_ratio/region_mean"] = masked_mean((clipped_low | clipped_high).float(), mask)
        per_token = per_token * self._importance(old, batch)
        loss_tokens = -per_token
        if self.config.kl_coef > 0:
            kl = k3_kl(logp, batch.ref_logprobs)
            loss_tokens = loss_tokens + self.config.kl_coef * kl
            stats["kl"] = masked_mean(kl.detach(), mask)
        if entropy is not None:
            if self.config.entropy_coef > 0:
                loss_tokens = loss_tokens - self.config.entropy_coef * entropy
            stats["entropy"] = masked_mean(entropy.detach(), mask)
        return masked_mean(loss_tokens, mask), stats

    def clipped_advantage_weight(self, new_logp: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Completion-level ``w = mean_tokens(A · ρ · 1[not clipped])`` under the updated policy."""
        old = batch.old_logprobs if batch.old_logprobs is not None else new_logp
        ratio = torch.exp(new_logp - old)
        adv = batch.advantages.unsqueeze(1).expand_as(ratio)
        weight = adv * ratio * self._importance(old, batch)
        if self.clip_range is not None:
            weight = weight * unclipped_mask(ratio, adv, *self.clip_range)
        return masked_mean(weight, batch.completion_mask, dim=1)

    def _importance(self, old_logprobs: torch.Tensor, batch: Batch) -> torch.Tensor | float:
        """Per-token importance weights for an engine/trainer mismatch; 1 when the trainer sampled."""
        if batch.sampling_logprobs is None or self.config.importance_correction == "none":
            return 1.0
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
        """Run the epochs × mini-batches of optimiser steps; returns averaged metrics.

        Under data parallelism this process trains on ``batch.local_rows``; every process splits its rows into
        the same number of mini-batches, and a mini-batch step is the sum of all processes' contributions.
        """
        policy.model.train()
        rows = torch.arange(batch.size)
        if batch.local_rows is not None:
            rows = rows[batch.local_rows]
        sums: dict[str, float] = {}
        count = 0
        for _ in range(self.config.epochs):
            order = rows[torch.randperm(len(rows), generator=generator)] if self.config.minibatches > 1 else rows
            for minibatch in order.chunk(self.config.minibatches):
                for key, value in self._minibatch_step(policy, optimizer, batch, minibatch, combine).items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
        policy.model.eval()
        return {key: value / count for key, value in sums.items()}

    def _minibatch_step(
        self,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        batch: Batch,
        rows: torch.Tensor,
        combine: LossCombiner | None,
    ) -> dict[str, float]:
        """One optimiser step on these rows, accumulated over micro-batches and processes.

        Each micro-batch's loss is its token mean, weighted by its share of the completion tokens of the whole
        mini-batch (over all processes), so the accumulated gradient is the mini-batch's token-mean gradient.
        Logged statistics are reduced the same way: token-weighted means over the mini-batch.
        """
        size = self.config.micro_batch_size
        micro = list(rows.split(size)) if size else [rows]
        local = torch.stack([batch.completion_mask[r].sum() for r in micro]).double().cpu()
        total = distributed.all_reduce_sum(local)  # tokens of each micro-step over all processes
        processes = distributed.world_size()
        mb_total = float(total.sum())
        optimizer.zero_grad(set_to_none=True)
        weighted: dict[str, float] = {}
        for i, part in enumerate(micro):
            mb = batch.select(part)
            mb.token_share = float(local[i] / total[i]) if total[i] > 0 else 1.0 / processes
            loss, stats = combine(policy, mb, self) if combine is not None else self.minibatch_loss(policy, mb)
            weight = float(local[i]) / mb_total if mb_total > 0 else 1.0 / (processes * len(micro))
            with policy.no_sync(skip=i < len(micro) - 1):
                policy.backward(loss * weight)
            stats["loss"] = loss.detach()
            for key, value in stats.items():
                weighted[key] = weighted.get(key, 0.0) + weight * float(value)
        keys = sorted(weighted)
        reduced = distributed.all_reduce_sum(torch.tensor([weighted[k] for k in keys], dtype=torch.float64))
        out = dict(zip(keys, reduced.tolist()))
        grad_norm = self._clip_gradients(policy)
        if not math.isfinite(grad_norm) or not math.isfinite(out["loss"]):
            optimizer.zero_grad(set_to_none=True)
            out["skipped_nonfinite"] = 1.0
        else:
            optimizer.step()
        out["grad_norm"] = grad_norm
        return out

    def logprobs(self, policy: Policy, mb: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropies, when the loss or the logs use them) at this algorithm's temperature."""
        want_entropy = self.config.entropy_coef > 0 or self.config.log_entropy
        return policy.token_logprobs(
            mb.input_ids,
            mb.attention_mask,
            mb.prompt_width,
            self.config.temperature,
            with_entropy=want_entropy,
            group_size=mb.group_size,
        )

    def minibatch_loss(self, policy: Policy, mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logp, entropy = self.logprobs(policy, mb)
        return self.surrogate(logp, mb, mb.advantages, entropy)

    def _clip_gradients(self, policy: Policy) -> float:
        return policy.clip_grad_norm(self.config.max_grad_norm)


class Reinforce(PolicyAlgo):
    """Plain policy gradient: every token's gradient is weighted by its completion's advantage."""

    name = "reinforce"


class GRPO(PolicyAlgo):
    """Clipped surrogate with asymmetric clip range; the paper's GRPO uses ε = 0.2."""

    name = "grpo"

    class Config(PolicyAlgoConfig):
        clip_low: float = Field(0.2, ge=0, lt=1, description="ε_low: ρ clipped below 1-ε_low for negative advantages")
        clip_high: float = Field(
            0.2, ge=0, description="ε_high: ρ clipped above 1+ε_high for positive advantages; DAPO raises it to 0.28"
        )

    @property
    def clip_range(self) -> tuple[float, float]:
        return (self.config.clip_low, self.config.clip_high)
