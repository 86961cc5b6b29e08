import torch

from morl.scalarize import Linear, fill_not_applicable


def test_linear_is_weighted_sum():
    r = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    torch.testing.assert_close(Linear()(r, torch.tensor([0.5, 2.0, 1.0])), torch.tensor([1.5, 3.0]))


def test_not_applicable_filled_with_group_mean():
    r = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [float("nan"), float("nan")], [1.0, float("nan")]])
    filled = fill_not_applicable(r, 2)
    torch.testing.assert_close(filled, torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]))
