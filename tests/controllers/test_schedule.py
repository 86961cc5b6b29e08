import json
import math

import pytest
import torch

from morl.components import RecipeError, build
from morl.controllers import WeightSchedule


def trajectory(controller, objectives, steps):
    controller.start(objectives)
    out = []
    for _ in range(steps):
        out.append(controller.weights().tolist())
        controller.after_update(None)
    return out


def test_linear_ramp_hand_computed():
    c = WeightSchedule(start=[1.0, 0.0], end=[0.0, 1.0], steps=4)
    got = trajectory(c, ["a", "b"], 6)
    want = [[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0], [0.0, 1.0]]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want))


def test_cosine_ramp_hand_computed():
    c = WeightSchedule(start=[0.0], end=[2.0], steps=4, shape="cosine")
    got = [w[0] for w in trajectory(c, ["a"], 6)]
    # (1 - cos(π p)) / 2 at p = 0, 1/4, 1/2, 3/4, 1: 0, 0.146447, 0.5, 0.853553, 1 (times 2)
    want = [0.0, 0.2928932, 1.0, 1.7071068, 2.0, 2.0]
    assert got == pytest.approx(want, abs=1e-6)


def test_delay_holds_the_start_weights():
    c = WeightSchedule(start={"a": 0.2, "b": 0.8}, end={"b": 0.4, "a": 0.6}, steps=2, delay=3)
    got = trajectory(c, ["a", "b"], 7)
    want = [[0.2, 0.8]] * 4 + [[0.4, 0.6], [0.6, 0.4], [0.6, 0.4]]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want))


def test_defaults_are_constant_equal_weights(normalized):
    c = build("controller", "schedule")
    got = trajectory(c, ["a", "b", "c", "d"], 3)
    assert got == [[0.25] * 4] * 3
    normalized(c)
    # end alone: ramp from equal weights
    c = WeightSchedule(end=[1.0, 0.0], steps=2)
    assert trajectory(c, ["a", "b"], 3) == [[0.5, 0.5], [0.75, 0.25], [1.0, 0.0]]


def test_metrics_and_state_round_trip():
    c = WeightSchedule(start=[1.0, 0.0], end=[0.0, 1.0], steps=4)
    trajectory(c, ["a", "b"], 2)
    assert c.metrics() == {"weights/a": 0.5, "weights/b": 0.5, "schedule/progress": 0.5}
    state = json.loads(json.dumps(c.state_dict()))
    assert state == {"objectives_": ["a", "b"], "step_": 2}
    resumed = WeightSchedule(**c.get_params())
    resumed.load_state_dict(state)
    resumed.start(["a", "b"])  # resumed state is kept, not reset
    assert resumed.weights().tolist() == c.weights().tolist() == [0.5, 0.5]


def test_validation_names_the_field():
    with pytest.raises(RecipeError, match="controller.end: 3 values for 2 objectives"):
        WeightSchedule(end=[1, 2, 3]).start(["a", "b"])
    with pytest.raises(RecipeError, match="controller.start: unknown objective"):
        WeightSchedule(start={"z": 1.0}).start(["a"])
    with pytest.raises(RecipeError, match="steps"):
        WeightSchedule(steps=0)
    with pytest.raises(RecipeError, match="shape"):
        WeightSchedule(shape="exponential")
    with pytest.raises(ValueError, match="finite"):
        WeightSchedule(start=[math.inf]).start(["a"])


def test_repr_echoes_parameters():
    assert repr(WeightSchedule(end=[0.0, 1.0], steps=10)) == (
        "WeightSchedule(start=None, end=[0.0, 1.0], steps=10, delay=0, shape='linear')"
    )
