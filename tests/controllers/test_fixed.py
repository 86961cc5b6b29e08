import pytest
import torch

from morl.components import RecipeError
from morl.controllers import FixedWeights


def test_equal_weights_by_default():
    c = FixedWeights()
    c.start(["a", "b", "c", "d"])
    torch.testing.assert_close(c.weights(), torch.full((4,), 0.25))


def test_weights_by_name_and_validation():
    c = FixedWeights(weights={"b": 2.0, "a": 1.0})
    c.start(["a", "b"])
    assert c.weights().tolist() == [1.0, 2.0]
    with pytest.raises(RecipeError, match="3 values for 2 objectives"):
        FixedWeights(weights=[1, 2, 3]).start(["a", "b"])
    assert c.metrics() == {"weights/a": 1.0, "weights/b": 2.0}
