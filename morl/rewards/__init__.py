"""Rewards: one objective each. See :mod:`morl.rewards.base` for the contract."""

from morl.rewards.accuracy import Accuracy
from morl.rewards.base import (
    RESERVED_ARGUMENTS,
    PlacedOnDevice,
    RewardError,
    RewardFn,
    StepInfo,
    check_columns,
    completion_token_ids,
    is_moving_target,
    objective_name,
    score_rewards,
)
from morl.rewards.boxed import boxed_answer, boxed_answers
from morl.rewards.brevity import Brevity
from morl.rewards.clarity import Clarity
from morl.rewards.conciseness import Conciseness
from morl.rewards.exact_match import ExactMatch
from morl.rewards.model import RewardModel

__all__ = [
    "RESERVED_ARGUMENTS",
    "Accuracy",
    "Brevity",
    "Clarity",
    "Conciseness",
    "ExactMatch",
    "PlacedOnDevice",
    "RewardError",
    "RewardFn",
    "RewardModel",
    "StepInfo",
    "boxed_answer",
    "boxed_answers",
    "check_columns",
    "completion_token_ids",
    "is_moving_target",
    "objective_name",
    "score_rewards",
]
