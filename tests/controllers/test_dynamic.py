import itertools
import math

import numpy as np
import pytest
import torch

from morl import Pipeline, TrainConfig
from morl.components import RecipeError
from morl.controllers import AdvantageLevel, GradientLevel, GradientWeighting, HypervolumeWeighting
from morl.controllers.dynamic import hypervolume, hypervolume_contribution, mirror_ascent_step, pareto_front
from morl.stages import Need
from morl.tinymath.task import make_split
from tests.batches import scored_record

# ---- exact hypervolume ---------------------------------------------------------------------------


def _grid_hypervolume(points, reference, step):
    """Brute force for points on a grid of spacing ``step``: count the dominated grid cells."""
    top = points.max(axis=0)
    axes = [np.arange(r + step / 2, t, step) for r, t in zip(reference, top)]
    count = 0
    for cell in itertools.product(*axes):
        count += bool(((points >= np.array(cell)).all(axis=1)).any())
    return count * step ** len(reference)


def test_hand_worked_volumes():
    assert hypervolume(np.array([[2.0, 1.0], [1.0, 2.0]]), np.zeros(2)) == pytest.approx(3.0)
    assert hypervolume(np.array([[1.0, 1.0, 1.0]]), np.zeros(3)) == pytest.approx(1.0)
    # two boxes 2×1×1 and 1×2×1 and a dominated point: 2 + 2 - 1
    points = np.array([[2.0, 1.0, 1.0], [1.0, 2.0, 1.0], [0.5, 0.5, 0.5]])
    assert hypervolume(points, np.zeros(3)) == pytest.approx(3.0)
    assert hypervolume(np.array([[1.0, -1.0]]), np.zeros(2)) == 0.0  # does not dominate the reference
    assert hypervolume(np.zeros((0, 2)), np.zeros(2)) == 0.0


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_exact_against_grid_count(d):
    rng = np.random.default_rng(d)
    for _ in range(5):
        points = rng.integers(0, 6, size=(int(rng.integers(1, 7)), d)) * 0.2
        reference = np.full(d, 0.2)
        assert hypervolume(points, reference) == pytest.approx(_grid_hypervolume(points, reference, 0.2), abs=1e-9)


def test_exact_against_monte_carlo():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, size=(8, 3))
    samples = rng.uniform(0, 1, size=(200_000, 3))
    inside = (samples[:, None, :] <= points[None]).all(axis=2).any(axis=1)
    estimate, sigma = inside.mean(), inside.std() / math.sqrt(len(samples))
    assert abs(hypervolume(points, np.zeros(3)) - estimate) < 4 * sigma


def test_contribution_and_front():
    front = np.array([[2.0, 1.0], [1.0, 2.0]])
    assert hypervolume_contribution(np.array([1.5, 1.5]), front, np.zeros(2)) == pytest.approx(0.25)
    assert hypervolume_contribution(np.array([1.0, 1.0]), front, np.zeros(2)) == 0.0  # dominated
    assert hypervolume_contribution(np.array([3.0, 3.0]), np.zeros((0, 2)), np.ones(2)) == pytest.approx(4.0)
    np.testing.assert_array_equal(pareto_front(np.vstack([front, [[1.0, 1.0], [2.0, 1.0]]])), [[1.0, 2.0], [2.0, 1.0]])


# ---- hypervolume-guided controller ------------------------------------------------------------------


def _batch(rewards, k):
    return scored_record(rewards, k)


def test_multiplier_from_hypervolume_contribution():
    c = HypervolumeWeighting(objectives=["acc", "mean_length"], minimize=["mean_length"])
    c.start(["acc", "short"])
    assert isinstance(c, AdvantageLevel) and Need.VALIDATION in c.needs and c.multiplier_ == 1.0
    c.observe_validation({"acc": 0.2, "short": 0.5, "mean_length": 40.0})  # the reference: (0.2, -40)
    assert c.multiplier_ == 1.0 and len(c.front_) == 0
    c.observe_validation({"acc": 0.5, "short": 0.5, "mean_length": 38.0})  # box 0.3 × 2 = 0.6
    assert c.hv_ == pytest.approx(0.6)
    assert c.multiplier_ == pytest.approx(0.5 + 1.5 * math.tanh(0.6))
    assert len(c.front_) == 1
    c.observe_validation({"acc": 0.4, "short": 0.5, "mean_length": 39.0})  # dominated: no contribution
    assert c.hv_ == 0.0 and c.multiplier_ == 0.5 and len(c.front_) == 1
    c.observe_validation({"acc": 0.3, "short": 0.5, "mean_length": 30.0})  # extends the front
    assert c.hv_ == pytest.approx(0.1 * 10 - 0.1 * 2) and len(c.front_) == 2  # its box minus the overlap
    assert c.metrics()["dynamic/validation/mean_length"] == pytest.approx(30.0)


def test_multiplier_scales_the_advantages():
    rewards = [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    adv = torch.tensor([[0.7, 0.0], [-0.7, 0.0], [0.7, 0.0], [-0.7, 0.0]])
    c = HypervolumeWeighting()
    c.start(["a", "b"])
    base = c.combine_advantages(adv, _batch(rewards, 2))
    torch.testing.assert_close(base, torch.tensor([1.0, -1.0, 1.0, -1.0]) / math.sqrt(2))  # GRPO on Σ w r
    c.multiplier_ = 2.0
    torch.testing.assert_close(c.combine_advantages(adv, _batch(rewards, 2)), 2.0 * base)


def test_state_round_trip_and_validation_errors():
    c = HypervolumeWeighting()
    c.start(["a", "b"])
    c.observe_validation({"a": 0.1, "b": 0.1, "mean_length": 3.0})
    c.observe_validation({"a": 0.2, "b": 0.3, "mean_length": 3.0})
    resumed = HypervolumeWeighting()
    resumed.load_state_dict(c.state_dict())
    resumed.start(["a", "b"])
    resumed.observe_validation({"a": 0.3, "b": 0.2, "mean_length": 3.0})
    c.observe_validation({"a": 0.3, "b": 0.2, "mean_length": 3.0})
    assert resumed.multiplier_ == pytest.approx(c.multiplier_) and len(resumed.front_) == len(c.front_) == 2
    with pytest.raises(KeyError, match="no mean for"):
        c.observe_validation({"a": 0.3})
    with pytest.raises(RecipeError, match="minimize"):
        HypervolumeWeighting(minimize=["length"]).start(["a", "b"])


def test_pipeline_validates_before_training_and_after_each_update(tiny_policy, tmp_path):
    seen = []

    class Spy(HypervolumeWeighting):
        def observe_validation(self, means):
            seen.append(dict(means))
            super().observe_validation(means)

    config = TrainConfig(steps=2, prompts_per_step=2, group_size=2, progress=False, output_dir=str(tmp_path / "r"))
    pipe = Pipeline(
        policy=tiny_policy,
        rewards=["accuracy", "clarity"],
        controller=Spy(validation_size=3),
        rollout={"name": "transformers", "max_new_tokens": 6},
        config=config,
    )
    with pytest.raises(ValueError, match="learns from validation prompts"):
        pipe.step(make_split("train", 2, 0))
    pipe.validation_data = make_split("eval", 5, 0)
    _, metrics = pipe.step(make_split("train", 2, 0))
    assert len(seen) == 2 and set(seen[0]) == {"accuracy", "clarity", "mean_length"}
    assert metrics["timing/validation"] > 0 and "dynamic/multiplier" in metrics
    pipe.step(make_split("train", 2, 1))
    assert len(seen) == 3


# ---- gradient-based controller --------------------------------------------------------------------


def test_mirror_ascent_hand_worked():
    # s = G·1 = (1, 0); softmax(log(1/2, 1/2) + ln 3 · s) = (3/4, 1/4)
    np.testing.assert_allclose(mirror_ascent_step(np.array([0.5, 0.5]), np.diag([1.0, 0.0]), math.log(3)), [0.75, 0.25])
    # s_m = <g_m, Σ g>: an objective conflicting with the rest loses weight
    gram = np.array([[1.0, -0.5, 0.0], [-0.5, 1.0, 0.5], [0.0, 0.5, 1.0]])  # s = (0.5, 1.0, 1.5)
    w = mirror_ascent_step(np.full(3, 1 / 3), gram, 1.0)
    np.testing.assert_allclose(w, np.exp([0.5, 1.0, 1.5]) / np.exp([0.5, 1.0, 1.5]).sum())


def test_gradient_weights_stay_on_the_simplex(normalized):
    rng = np.random.default_rng(0)
    c = GradientWeighting(lr=5.0, weights0={"a": 1.0, "b": 3.0, "c": 1.0})
    c.start(["a", "b", "c"])
    np.testing.assert_allclose(c.weights_, [0.2, 0.6, 0.2])
    assert isinstance(c, GradientLevel) and c.normalization == "simplex"
    for _ in range(100):
        a = rng.normal(size=(3, 4))
        c.weights_from_gram(a @ a.T, np.zeros(3), None)
        normalized(c)
        assert (c.weights_ > 0).all()
    with pytest.raises(RecipeError, match="positive"):
        GradientWeighting(weights0=[1.0, 0.0]).start(["a", "b"])


def test_fit_validates_on_training_prompts_not_on_the_eval_split(tiny_policy, tmp_path):
    seen_prompts: list[str] = []

    def seen(prompts, completions, training=True, **kwargs):  # records what it is asked to score outside training
        if not training:
            seen_prompts.extend(prompts)
        return [0.0] * len(completions)

    config = TrainConfig(
        steps=1, prompts_per_step=2, group_size=2, progress=False, eval_every=0, eval_greedy=False, eval_sampled=False
    )
    pipe = Pipeline(
        policy=tiny_policy,
        rewards=["accuracy", seen],
        controller=HypervolumeWeighting(validation_size=3),
        rollout={"name": "transformers", "max_new_tokens": 4},
        config=TrainConfig(**{**config.model_dump(), "output_dir": str(tmp_path / "run")}),
    )
    train, held_out = make_split("train", 6, 0), make_split("eval", 2, 0)
    pipe.fit(train, held_out)  # no evaluation modes: every call outside training is the controller's validation
    assert seen_prompts and set(seen_prompts) <= {ex["prompt"] for ex in train}
    assert not set(seen_prompts) & {ex["prompt"] for ex in held_out}
