"""Advantage estimators and policy algorithms."""

from morl.algos.advantages import RLOO, AdvantageEstimator, BatchWhiten, GroupNorm, group_normalize
from morl.algos.policy_gradient import GRPO, PolicyAlgo, Reinforce, k3_kl, masked_mean, unclipped_mask

__all__ = [
    "GRPO",
    "RLOO",
    "AdvantageEstimator",
    "BatchWhiten",
    "GroupNorm",
    "PolicyAlgo",
    "Reinforce",
    "group_normalize",
    "k3_kl",
    "masked_mean",
    "unclipped_mask",
]
