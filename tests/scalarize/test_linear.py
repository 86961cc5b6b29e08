import torch

from morl.algos import GroupNorm
from morl.scalarize import Linear, fill_not_applicable
from morl.scalarize.base import mark_unscorable


def test_linear_is_weighted_sum():
    r = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    torch.testing.assert_close(Linear()(r, torch.tensor([0.5, 2.0, 1.0])), torch.tensor([1.5, 3.0]))


def test_not_applicable_filled_with_group_mean():
    r = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [float("nan"), float("nan")], [1.0, float("nan")]])
    filled = fill_not_applicable(r, 2)
    torch.testing.assert_close(filled, torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]))


def test_unscorable_completions_get_a_nan_score_for_the_advantage():
    # rows: all applicable, one not applicable (filled, still scored), none applicable (no score)
    nan = float("nan")
    r = torch.tensor([[1.0, 0.0], [nan, 1.0], [nan, nan], [0.0, 0.0]])
    scores = Linear()(fill_not_applicable(r, 4), torch.tensor([1.0, 2.0]))
    # b's group mean is 1/3 and a's 1/2: scores 1, 1/2 + 2, 1/2 + 2/3, 0
    torch.testing.assert_close(scores, torch.tensor([1.0, 2.5, 0.5 + 2 / 3, 0.0]))
    marked = mark_unscorable(scores, r)
    assert torch.isnan(marked[2]) and torch.equal(marked[[0, 1, 3]], scores[[0, 1, 3]])
    # the advantage estimator then leaves it out: the three scored completions alone
    torch.testing.assert_close(
        GroupNorm()(marked, 4),
        torch.cat([GroupNorm()(scores[[0, 1, 3]], 3)[:2], torch.zeros(1), GroupNorm()(scores[[0, 1, 3]], 3)[2:]]),
    )
