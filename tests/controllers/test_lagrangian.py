import numpy as np
import pytest
import torch

from morl.components import RecipeError
from morl.controllers import AdvantageLevel, Lagrangian
from tests.batches import scored_record

OBJ = ["accuracy", "conciseness", "clarity"]


def _batch(rewards):
    return scored_record(rewards)


def test_paper_defaults_and_hand_worked_dual_ascent():
    c = Lagrangian()
    assert (c.config.primary, c.config.targets, c.config.dual_lr) == ("accuracy", [0.9, 0.9], 0.01)
    assert isinstance(c, AdvantageLevel) and c.normalization == "free"
    c.start(OBJ)
    np.testing.assert_array_equal(c.lambdas_, [0.0, 0.0])  # duals start at 0: the primary alone
    # batch means: conciseness 0.5, clarity 1.0 -> λ = max(0, 0 + 0.01 (0.9 - 0.5)), max(0, 0.01 (0.9 - 1))
    c.before_update(_batch([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(c.lambdas_, [0.004, 0.0])
    c.before_update(_batch([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))  # conciseness 0: gap 0.9
    np.testing.assert_allclose(c.lambdas_, [0.013, 0.0])
    torch.testing.assert_close(c.weights(), torch.tensor([1.0, 0.013, 0.0]))
    metrics = c.metrics()
    assert metrics["lagrangian/lambda/conciseness"] == pytest.approx(0.013)
    assert metrics["lagrangian/target/clarity"] == pytest.approx(0.9)
    assert metrics["weights/accuracy"] == 1.0


def test_combined_advantage_is_primary_plus_weighted_constraints():
    c = Lagrangian(primary="clarity", targets={"accuracy": 1.0, "conciseness": 0.5}, dual_lr=1.0)
    c.start(OBJ)
    c.before_update(_batch([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))  # means 0.5, 0.5 -> gaps 0.5, 0
    np.testing.assert_allclose(c.lambdas_, [0.5, 0.0])
    adv = torch.tensor([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]])
    torch.testing.assert_close(c.combine_advantages(adv, None), torch.tensor([3.0 + 0.5, -3.0 - 0.5]))


def test_duals_never_negative_and_rise_while_violated():
    rng = np.random.default_rng(0)
    c = Lagrangian(targets=[0.7, 0.3], dual_lr=0.1)
    c.start(OBJ)
    for _ in range(200):
        rewards = rng.integers(0, 2, size=(8, 3)).astype(float)
        before = c.lambdas_.copy()
        c.before_update(_batch(rewards))
        means = rewards[:, 1:].mean(axis=0)
        assert (c.lambdas_ >= 0).all()
        violated = means < np.array([0.7, 0.3])
        assert (c.lambdas_[violated] > before[violated]).all()
        assert (c.lambdas_[~violated] <= before[~violated]).all()


def test_lambda_cap_not_applicable_rewards_and_validation():
    c = Lagrangian(primary="a", targets=[1.0], dual_lr=10.0, lambda_max=2.0)
    c.start(["a", "b"])
    c.before_update(_batch([[1.0, 0.0], [0.0, 0.0]]))
    assert c.lambdas_[0] == 2.0
    c.before_update(_batch([[1.0, float("nan")], [0.0, float("nan")]]))  # no evidence: unchanged
    assert c.lambdas_[0] == 2.0
    with pytest.raises(RecipeError, match="primary: 'accuracy' is not an objective"):
        Lagrangian().start(["a", "b"])
    with pytest.raises(RecipeError, match="1 values for 2 objectives"):
        Lagrangian(targets=[0.9]).start(OBJ)
    with pytest.raises(RecipeError, match="unknown objective"):
        Lagrangian(targets={"accuracy": 0.9, "clarity": 0.9}).start(OBJ)  # the primary is no constraint


def test_state_round_trip():
    c = Lagrangian(dual_lr=0.5)
    c.start(OBJ)
    c.before_update(_batch([[1.0, 0.0, 0.0]]))
    resumed = Lagrangian(dual_lr=0.5)
    resumed.load_state_dict(c.state_dict())
    resumed.start(OBJ)
    np.testing.assert_allclose(resumed.lambdas_, c.lambdas_)
