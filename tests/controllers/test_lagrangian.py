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
    assert (c.config.primary, c.config.targets, c.config.dual_lr) == (None, [0.9, 0.9], 0.01)  # None: the first
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
        Lagrangian(primary="accuracy").start(["a", "b"])
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


def test_targets_at_the_starting_levels_hand_worked():
    """targets 'start': each constraint's own mean over the first batches, gaps in units of its starting std."""
    c = Lagrangian(targets="start", start_batches=2, dual_lr=0.5)
    c.start(["a", "b", "c"])  # no primary named: the first objective
    c.before_update(_batch([[1.0, 0.0, 2.0], [0.0, 1.0, 4.0]]))
    c.before_update(_batch([[1.0, 1.0, 6.0], [0.0, 0.0, 8.0]]))
    np.testing.assert_array_equal(c.lambdas_, [0.0, 0.0])  # still measuring: no dual moves
    np.testing.assert_allclose(c.targets, [0.5, 5.0])  # b: 0, 1, 1, 0; c: 2, 4, 6, 8
    # stds: b 0.5; c sqrt(((2-5)² + (4-5)² + (6-5)² + (8-5)²) / 4) = sqrt(5)
    c.before_update(_batch([[1.0, 0.0, 1.0], [1.0, 0.0, 3.0]]))  # means b 0, c 2
    np.testing.assert_allclose(c.lambdas_, [0.5 * (0.5 - 0.0) / 0.5, 0.5 * (5.0 - 2.0) / np.sqrt(5.0)])
    c.before_update(_batch([[1.0, 1.0, 5.0 + np.sqrt(5.0)]]))  # one std above each level: duals come down by η
    np.testing.assert_allclose(c.lambdas_, [0.0, 0.5 * 3.0 / np.sqrt(5.0) - 0.5], rtol=1e-6)  # rewards are float32
    torch.testing.assert_close(c.weights(), torch.tensor([1.0, 0.0, 0.5 * 3.0 / np.sqrt(5.0) - 0.5]).float())
    assert c.metrics()["lagrangian/target/c"] == pytest.approx(5.0)


def test_starting_levels_skip_not_applicable_rewards_and_resume_mid_measurement():
    c = Lagrangian(targets="start", start_batches=2, dual_lr=1.0)
    c.start(["a", "b"])
    c.before_update(_batch([[0.0, 3.0], [0.0, float("nan")]]))
    assert np.isnan(c.metrics()["lagrangian/target/b"])  # not measured yet: said, not guessed
    resumed = Lagrangian(targets="start", start_batches=2, dual_lr=1.0)
    resumed.load_state_dict(c.state_dict())
    resumed.start(["a", "b"])
    for controller in (c, resumed):
        controller.before_update(_batch([[0.0, 5.0], [0.0, 7.0]]))  # b: 3, 5, 7 (the NaN left out)
        np.testing.assert_allclose(controller.targets, [5.0])
        controller.before_update(_batch([[0.0, 5.0 - np.sqrt(8.0 / 3.0)]]))  # one std below
        np.testing.assert_allclose(controller.lambdas_, [1.0])


def test_one_setting_serves_tasks_with_other_objectives_and_scales():
    """The same section on TinyMath's three 0/1 rewards and TinySort's 0/1 plus 0-10: no name, no scale in it."""
    spec = {"targets": "start", "start_batches": 1, "dual_lr": 0.1}
    math_c, sort_c = Lagrangian(**spec), Lagrangian(**spec)
    math_c.start(["accuracy", "conciseness", "clarity"])
    sort_c.start(["exact_match", "brevity"])
    sort_c.before_update(_batch([[1.0, 4.0], [0.0, 8.0]]))  # brevity 6 ± 2
    sort_c.before_update(_batch([[1.0, 4.0], [1.0, 4.0]]))  # 4: one std below
    np.testing.assert_allclose(sort_c.lambdas_, [0.1])
    math_c.before_update(_batch([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))  # conciseness 0.5 ± 0.5, clarity flat at 1
    math_c.before_update(_batch([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))  # 0: one std below; clarity 0.5 below (std 1)
    np.testing.assert_allclose(math_c.lambdas_, [0.1, 0.05])
