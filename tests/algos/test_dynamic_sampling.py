"""DAPO's dynamic sampling filter: a group is informative unless every objective is constant within it."""

import pytest
import torch

from morl.algos import informative_groups

NAN = float("nan")


def test_informative_groups_hand_worked():
    # 4 groups of 3 completions, 2 objectives
    rewards = torch.tensor(
        [
            [1.0, 0.0], [1.0, 0.0], [1.0, 0.0],  # constant in both: dropped
            [1.0, 0.0], [1.0, 1.0], [1.0, 0.0],  # the second objective varies: kept
            [NAN, 0.5], [NAN, 0.5], [NAN, 0.5],  # NaN equals NaN, 0.5 constant: dropped
            [NAN, 0.5], [0.0, 0.5], [NAN, 0.5],  # applicable to one completion only: varies, kept
        ]
    )  # fmt: skip
    assert informative_groups(rewards, 3).tolist() == [False, True, False, True]


def test_single_completion_groups_carry_no_signal():
    assert not informative_groups(torch.tensor([[1.0], [0.0]]), 1).any()


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="group_size"):
        informative_groups(torch.zeros(5, 2), 2)
    with pytest.raises(ValueError, match=r"\[N, M\]"):
        informative_groups(torch.zeros(4), 2)
