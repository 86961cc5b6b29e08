"""Advantage estimators, the policy loss, its updater and policy algorithms."""

from morl.algos.advantages import (
    RLOO,
    AdvantageEstimator,
    BatchWhiten,
    GroupNorm,
    group_normalize,
    per_objective_advantages,
)
from morl.algos.dynamic_sampling import informative_groups
from morl.algos.loss import LossOutput, PolicyLoss, k1_kl, k3_kl, masked_mean, sequence_kl, unclipped_mask
from morl.algos.policy_gradient import GRPO, PolicyAlgo, Reinforce
from morl.algos.updater import Updater

__all__ = [
    "GRPO",
    "RLOO",
    "AdvantageEstimator",
    "BatchWhiten",
    "GroupNorm",
    "LossOutput",
    "PolicyAlgo",
    "PolicyLoss",
    "Reinforce",
    "Updater",
    "group_normalize",
    "informative_groups",
    "k1_kl",
    "k3_kl",
    "masked_mean",
    "per_objective_advantages",
    "sequence_kl",
    "unclipped_mask",
]
