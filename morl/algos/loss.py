"""The policy loss, composed from the axes TRL users know; a function of tensors that returns its own statistics.

For a completion ``i`` with advantage ``A_i`` and completion tokens ``t`` (mask ``m_{i,t}``), the per-token loss is

    ℓ_{i,t} = -min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1-ε_low, 1+ε_high) A_i) · c_{i,t}  +  β · KL_{i,t}  -  α · H_{i,t}

aggregated over the (mini-)batch by ``loss_type``. The axes, with TRL's names (``GRPOConfig``):

``importance_sampling_level`` — what ``ρ`` is:

- ``token``: ``ρ_{i,t} = π_θ(y_t | ...) / π_old(y_t | ...)``, one ratio per token (PPO, GRPO);
- ``sequence``: GSPO's ``s_i = exp(mean_t (log π_θ - log π_old))``, the length-normalised sequence likelihood
  ratio, one value per completion broadcast to its tokens; the gradient flows through the mean into every token
  (Zheng et al. 2025, "Group Sequence Policy Optimization", https://arxiv.org/abs/2507.18071). Sequence ratios
  stay close to 1, so GSPO clips them with a much narrower range (TRL: ``epsilon=3e-4``, ``epsilon_high=4e-4``).

Clipping — ``clip_low`` (ε_low, TRL's ``epsilon``) and ``clip_high`` (ε_high, TRL's ``epsilon_high``; DAPO's
clip-higher raises it to 0.28 against entropy collapse, Yu et al. 2025, https://arxiv.org/abs/2503.14476). A token
passes no gradient where the clip binds: ``A > 0 and ρ > 1+ε_high``, or ``A < 0 and ρ < 1-ε_low``
(:func:`clip_regions`, the one place this rule is written). REINFORCE is unclipped (``clip=None``).

``loss_type`` — how the token losses become one number (Liu et al. 2025, "Understanding R1-Zero-Like Training",
https://arxiv.org/abs/2503.20783, for the length bias of the first):

- ``grpo``: ``mean_i (Σ_t m ℓ / Σ_t m)``, each sequence's token mean, then the mean over sequences (long
  completions' tokens weigh less);
- ``bnpo`` / ``dapo``: ``Σ_{i,t} m ℓ / Σ_{i,t} m``, the token mean over the batch. TRL normalises ``bnpo`` by the
  local batch and ``dapo`` by the global one; in morl both are normalised by the completion tokens of the whole
  mini-batch step, across micro-batches and processes (:mod:`morl.algos.updater`), so the two are the same loss;
- ``dr_grpo``: ``Σ_{i,t} m ℓ / (N · L_max)``, the token sum over a constant, ``L_max = max_completion_length`` (the
  batch's completion width when None): no length normalisation at all.

The KL to a frozen reference — ``kl_coef`` (β, TRL's ``beta``), ``kl_estimator`` (per token, with
``r = log π_ref - log π_θ``: ``k1 = -r``, ``k3 = exp(r) - r - 1``; Schulman, http://joschu.net/blog/kl-approx.html)
and ``kl_in``: ``loss`` adds ``β·KL`` to each token's loss (GRPO); ``reward`` leaves it out of the loss, and the
training step subtracts ``β ·`` :func:`sequence_kl` of the sampling policy from each completion's score instead
(the PPO-RLHF reward penalty). ``k1`` in the loss is refused: its expected gradient is 0 (:func:`check_kl_placement`).

The entropy bonus ``α · H`` (``entropy_coef``) and the importance correction ``c_{i,t}`` for a rollout engine that
is not the trainer (:mod:`morl.algos.importance`) multiply or add per token as written above.

:class:`LossOutput` carries, besides the loss, the ratio actually used, the ``unclipped`` mask and the
aggregation's ``normaliser`` for these rows, so the updater weights micro-batches by it and every reader of "was
this token clipped?" (the covariance law's clipped advantage weight, the clipped-mass diagnostic, PAMA's valid
tokens) uses the loss's own answer.

Example: two completions of 1 and 3 tokens, on-policy (ρ = 1), advantages +2 and -1; the token losses are -2 and
+1, +1, +1, so the loss types disagree:
    >>> loss = PolicyLoss(loss_type="grpo")
    >>> logp = torch.zeros(2, 3)
    >>> mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    >>> round(float(loss(logp, torch.tensor([2.0, -1.0]), mask).loss), 4)  # mean(-2, +1)
    -0.5
    >>> round(float(PolicyLoss(loss_type="bnpo")(logp, torch.tensor([2.0, -1.0]), mask).loss), 4)  # (-2+3)/4
    0.25
    >>> round(float(PolicyLoss(loss_type="dr_grpo")(logp, torch.tensor([2.0, -1.0]), mask).loss), 4)  # (-2+3)/(2·3)
    0.1667
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

LossType = Literal["grpo", "bnpo", "dapo", "dr_grpo"]
ImportanceSamplingLevel = Literal["token", "sequence"]
KLEstimator = Literal["k1", "k3"]
KLIn = Literal["loss", "reward"]

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set (over everything, or along ``dim``); 0 where nothing is set.

    Example:
        >>> masked_mean(torch.tensor([1.0, 5.0]), torch.tensor([1, 0]))
        tensor(1.)
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp_min(1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def k1_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimator of KL(π_θ || π_ref): ``log π_θ - log π_ref`` (unbiased, can be negative).

    Example:
        >>> k1_kl(torch.tensor([-1.0]), torch.tensor([-2.0]))
        tensor([1.])
    """
    return logp - ref_logp


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ || π_ref): ``exp(r) - r - 1`` with ``r = log π_ref - log π_θ``.

    Unbiased and always non-negative. Example: equal policies give 0.
        >>> k3_kl(torch.tensor([-1.0]), torch.tensor([-1.0]))
        tensor([0.])
    """
    r = ref_logp - logp
    return torch.exp(r) - r - 1.0


def token_kl(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token KL estimate ``[N, L]`` with the named estimator (``k1`` or ``k3``)."""
    if estimator == "k1":
        return k1_kl(logp, ref_logp)
    if estimator == "k3":
        return k3_kl(logp, ref_logp)
    raise ValueError(f"kl_estimator {estimator!r}; allowed: k1, k3")


def check_kl_placement(kl_coef: float, estimator: str, kl_in: str) -> None:
    """Refuse ``k1`` in the loss: it is a no-op.

    On-policy the expected gradient of ``β · k1 = β (log π_θ - log π_ref)`` is ``β E_π[∇log π_θ] = 0`` (the score
    has mean 0), while the gradient of ``KL(π_θ || π_ref)`` is ``E_π[(log π_θ - log π_ref) ∇log π_θ]``, not 0:
    k1 estimates the KL's value, not its gradient. Subtracted from the reward (``kl_in: reward``) k1 multiplies the
    score function and gives exactly that gradient. ``k3``'s gradient in the loss, ``(1 - π_ref/π_θ) ∇log π_θ``,
    has expectation ``-E_{π_ref}[∇log π_θ] = ∇KL(π_ref || π_θ)``: the reverse KL, with the same minimiser and the
    same gradient to first order near the reference, so it does regularise (GRPO's choice). TRL likewise offers
    k1 only as a logged estimate.
    """
    if kl_coef > 0 and kl_in == "loss" and estimator == "k1":
        raise ValueError(
            "kl_estimator: k1 with kl_in: loss (kl_coef > 0) is a no-op: on-policy the expected gradient of"
            " k1 = log π - log π_ref is 0. Use kl_estimator: k3 in the loss, or kl_in: reward with k1"
        )


def sequence_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, estimator: KLEstimator = "k3"
) -> torch.Tensor:
    """Per-completion KL ``[N]``: the per-token estimates summed over each completion's tokens.

    With ``kl_in: reward`` the training step subtracts ``β · sequence_kl(old, ref, mask)`` from the scores.

    Example: ``k1`` of two tokens ``(0.5 - 0) + (-1 - -2)``; padding does not count.
        >>> sequence_kl(torch.tensor([[0.5, -1.0, 3.0]]), torch.tensor([[0.0, -2.0, 0.0]]), torch.tensor([[1, 1, 0]]),
        ...             "k1")
        tensor([1.5000])
    """
    return (token_kl(logp, ref_logp, estimator) * mask.to(logp.dtype)).sum(dim=1)


def clip_regions(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clipped_low, clipped_high)``: where ``A < 0 and ρ < 1-ε_low`` and where ``A > 0 and ρ > 1+ε_high``.

    The clip rule of the clipped surrogate, written once: there ``min(ρA, clip(ρ)A)`` is the constant branch.
    """
    clipped_low = (ratio < 1 - clip_low) & (advantages < 0)
    clipped_high = (ratio > 1 + clip_high) & (advantages > 0)
    return clipped_low, clipped_high


def unclipped_mask(ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """True where the clipped surrogate still passes gradient: not (A>0 and ρ>1+ε_h) and not (A<0 and ρ<1-ε_l).

    Example:
        >>> unclipped_mask(torch.tensor([1.5, 1.5, 0.5]), torch.tensor([1.0, -1.0, -1.0]), 0.2, 0.2)
        tensor([False,  True, False])
    """
    clipped_low, clipped_high = clip_regions(ratio, advantages, clip_low, clip_high)
    return ~(clipped_low | clipped_high)


def importance_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: ImportanceSamplingLevel = "token"
) -> torch.Tensor:
    """``ρ`` ``[N, L]`` per token, or GSPO's ``exp(mean_t (logp - old))`` per sequence broadcast to its tokens.

    Example: a sequence of two tokens with log-ratios 0.1 and 0.3 (the third is padding) gets ``exp(0.2)``.
        >>> logp, mask = torch.tensor([[0.1, 0.3, 9.0]]), torch.tensor([[1, 1, 0]])
        >>> importance_ratio(logp, torch.zeros(1, 3), mask, "sequence")
        tensor([[1.2214, 1.2214, 1.2214]])
    """
    if level == "token":
        return torch.exp(logp - old_logp)
    if level == "sequence":
        log_ratio = masked_mean(logp - old_logp, mask, dim=1)
        return torch.exp(log_ratio).unsqueeze(1).expand_as(logp)
    raise ValueError(f"importance_sampling_level {level!r}; allowed: token, sequence")


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, loss_type: LossType, max_completion_length: int | None = None
) -> torch.Tensor:
    """Per-token values ``[N, L]`` -> the scalar of ``loss_type`` (see the module docstring) on these rows."""
    if loss_type in ("bnpo", "dapo"):
        return masked_mean(values, mask)
    if loss_type == "grpo":
        return masked_mean(values, mask, dim=1).mean()
    if loss_type == "dr_grpo":
        width = max_completion_length or mask.shape[1]
        return (values * mask.to(values.dtype)).sum() / (mask.shape[0] * width)
    raise ValueError(f"loss_type {loss_type!r}; allowed: {', '.join(LOSS_TYPES)}")


def loss_normaliser(mask: torch.Tensor, loss_type: LossType, max_completion_length: int | None = None) -> float:
    """The denominator of ``loss_type`` contributed by these rows: completion tokens (``bnpo``, ``dapo``), sequences
    (``grpo``) or sequences × ``L_max`` (``dr_grpo``). Rows' losses weighted by their share of the summed
    normalisers add up to the loss of all the rows together.

    Example:
        >>> mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
        >>> [loss_normaliser(mask, t) for t in ("bnpo", "grpo", "dr_grpo")]
        [4.0, 2.0, 6.0]
    """
    if loss_type in ("bnpo", "dapo"):
        return float(mask.sum())
    if loss_type == "grpo":
        return float(mask.shape[0])
    if loss_type == "dr_grpo":
        return float(mask.shape[0] * (max_completion_length or mask.shape[1]))
    raise ValueError(f"loss_type {loss_type!r}; allowed: {', '.join(LOSS_TYPES)}")


@dataclass(frozen=True)
class LossOutput:
    """The loss of some rows and the statistics that come with it.

    Attributes:
        loss: the scalar to backpropagate: the policy term and the regularisers, aggregated by ``loss_type``.
        policy_loss: the policy term alone, aggregated the same way (a gradient-level controller's ``L_m``).
        regularizer: the KL (when ``kl_in: loss``) and entropy terms alone; ``loss = policy_loss + regularizer``
            up to rounding.
        ratio: ``[N, L]`` the importance ratio used (detached), per token or per sequence (broadcast); not masked.
        unclipped: ``[N, L]`` bool, True where the surrogate passes gradient (all True when unclipped). Padding is
            not masked out: combine it with the completion mask.
        importance: ``[N, L]`` the engine/trainer correction that multiplied the policy term, None without one.
        normaliser: this loss's denominator contributed by these rows (:func:`loss_normaliser`).
        stats: detached token means over these rows: ``clip_ratio/{low,high,region}_mean`` (clipped losses),
            ``kl`` (with a reference), ``entropy`` (when entropies were given).
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    regularizer: torch.Tensor
    ratio: torch.Tensor
    unclipped: torch.Tensor
    importance: torch.Tensor | None
    normaliser: float
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyLoss:
    """The policy loss along TRL's axes; call it on tensors. See the module docstring for each axis.

    ``clip`` is ``(ε_low, ε_high)`` or None (unclipped, REINFORCE).
    """

    loss_type: LossType = "bnpo"
    importance_sampling_level: ImportanceSamplingLevel = "token"
    clip: tuple[float, float] | None = None
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k3"
    kl_in: KLIn = "loss"
    entropy_coef: float = 0.0
    max_completion_length: int | None = None

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r}; allowed: {', '.join(LOSS_TYPES)}")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ValueError(f"importance_sampling_level {self.importance_sampling_level!r}; allowed: token, sequence")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator {self.kl_estimator!r}; allowed: k1, k3")
        if self.kl_in not in ("loss", "reward"):
            raise ValueError(f"kl_in {self.kl_in!r}; allowed: loss, reward")
        check_kl_placement(self.kl_coef, self.kl_estimator, self.kl_in)

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_coef > 0 and self.kl_in == "loss"

    def normaliser(self, mask: torch.Tensor) -> float:
        """This loss's denominator contributed by rows with this completion mask."""
        return loss_normaliser(mask, self.loss_type, self.max_completion_length)

    def __call__(
        self,
        logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        *,
        old_logp: torch.Tensor | None = None,
        ref_logp: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
        importance: torch.Tensor | None = None,
    ) -> LossOutput:
        """The loss of these rows.

        Args:
            logp: ``[N, L]`` log-probs of the sampled tokens under the policy being trained.
            advantages: ``[N]`` one advantage per completion.
            mask: ``[N, L]`` completion mask (1 on completion tokens, 0 on padding).
            old_logp: ``[N, L]`` log-probs under the sampling policy; None: on-policy (``ρ = 1``, with gradient).
            ref_logp: ``[N, L]`` log-probs under the reference; needed when the KL is in the loss.
            entropy: ``[N, L]`` token entropies, for the bonus and the ``entropy`` statistic.
            importance: ``[N, L]`` engine/trainer correction of the policy term (constants), or None.
        """
        old = old_logp if old_logp is not None else logp.detach()
        ratio = importance_ratio(logp, old, mask, self.importance_sampling_level)
        adv = advantages.unsqueeze(1)
        per_token = ratio * adv
        stats: dict[str, torch.Tensor] = {}
        if self.clip is not None:
            low, high = self.clip
            clipped = torch.clamp(ratio, 1.0 - low, 1.0 + high) * adv
            per_token = torch.minimum(per_token, clipped)
            clipped_low, clipped_high = clip_regions(ratio.detach(), adv, low, high)
            unclipped = ~(clipped_low | clipped_high)
            stats["clip_ratio/low_mean"] = masked_mean(clipped_low.float(), mask)
            stats["clip_ratio/high_mean"] = masked_mean(clipped_high.float(), mask)
            stats["clip_ratio/region_mean"] = masked_mean((clipped_low | clipped_high).float(), mask)
        else:
            unclipped = torch.ones_like(ratio, dtype=torch.bool)
        if importance is not None:
            per_token = per_token * importance
        loss_tokens = -per_token
        regularizer_tokens = torch.zeros_like(per_token)
        if self.kl_coef > 0 and ref_logp is not None:
            kl = token_kl(logp, ref_logp, self.kl_estimator)
            stats["kl"] = masked_mean(kl.detach(), mask)
            if self.kl_in == "loss":
                loss_tokens = loss_tokens + self.kl_coef * kl
                regularizer_tokens = regularizer_tokens + self.kl_coef * kl
        elif self.kl_in_loss:
            raise ValueError("kl_coef > 0 with kl_in: loss needs the reference log-probs (ref_logp)")
        if entropy is not None:
            if self.entropy_coef > 0:
                loss_tokens = loss_tokens - self.entropy_coef * entropy
                regularizer_tokens = regularizer_tokens - self.entropy_coef * entropy
            stats["entropy"] = masked_mean(entropy.detach(), mask)

        def agg(values: torch.Tensor) -> torch.Tensor:
            return aggregate(values, mask, self.loss_type, self.max_completion_length)

        return LossOutput(
            loss=agg(loss_tokens),
            policy_loss=agg(-per_token),
            regularizer=agg(regularizer_tokens),
            ratio=ratio.detach(),
            unclipped=unclipped,
            importance=importance,
            normaliser=self.normaliser(mask),
            stats=stats,
        )
