"""Component state loads only into the class that saved it."""

from __future__ import annotations

import numpy as np
import pytest

from morl.controllers import CTWA, Lagrangian
from morl.rewards import Conciseness
from morl.state import StateMismatch, TrainingState, capture_parts, class_path, restore_parts


def _started_ctwa() -> CTWA:
    ctwa = CTWA(targets=[0.1, 0.1])
    ctwa.start(["accuracy", "clarity"])
    ctwa.u_ = np.array([0.25, -0.5])
    return ctwa


def test_state_round_trips_into_the_same_class():
    saved = capture_parts({"controller": _started_ctwa(), "plain": short})
    assert set(saved) == {"controller"}  # a plain function has no state
    assert saved["controller"]["class"] == "morl.controllers.ctwa.CTWA"
    fresh = CTWA(targets=[0.1, 0.1])
    restore_parts({"controller": fresh}, saved)
    fresh.start(["accuracy", "clarity"])  # resumed state is kept by start()
    assert fresh.u_.tolist() == [0.25, -0.5]


def test_state_of_another_class_is_refused_naming_both():
    saved = capture_parts({"controller": _started_ctwa()})
    lagrangian = Lagrangian(primary="accuracy", targets=[0.5])
    with pytest.raises(StateMismatch, match=r"controller: the checkpoint holds the state of morl\.controllers\.ctwa"):
        restore_parts({"controller": lagrangian}, saved)
    assert not hasattr(lagrangian, "u_") and not hasattr(lagrangian, "cov_ema_")  # nothing was loaded


def test_missing_and_unknown_parts_are_refused():
    saved = capture_parts({"controller": _started_ctwa()})
    with pytest.raises(StateMismatch) as info:
        restore_parts({"controller": _started_ctwa(), "reward/conciseness": Conciseness()}, saved)
    assert "reward/conciseness" in str(info.value) and "has none" in str(info.value)
    with pytest.raises(StateMismatch, match="does not have"):
        restore_parts({}, saved)


def test_training_state_json_round_trip():
    state = TrainingState(step=3, data_position=12, skipped_steps=1, identity={"train": {"lr": 1e-4}})
    assert TrainingState.from_json(state.to_json()) == state
    assert class_path(short) == "tests.test_state.short"


def short(prompts, completions, **kwargs):
    return [1.0] * len(completions)
