"""Rewards: one objective each. See :mod:`morl.rewards.base` for the contract."""

from morl.rewards.accuracy import Accuracy
from morl.rewards.base import (
    RewardError,
    RewardFn,
    check_columns,
    is_moving_target,
    objective_name,
    score_rewards,
)
from morl.rewards.boxed import boxed_answer, boxed_answers
from morl.rewards.clarity import Clarity
from morl.rewards.conciseness import Conciseness

__all__ = [
    "Accuracy",
    "Clarity",
    "Conciseness",
    "RewardError",
    "RewardFn",
    "boxed_answer",
    "boxed_answers",
    "check_columns",
    "is_moving_target",
    "objective_name",
    "score_rewards",
]
