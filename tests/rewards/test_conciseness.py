"""Conciseness reward: the running mean of training lengths, worked by hand."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from morl.components import build
from morl.rewards import Conciseness, score_rewards


def call(con: Conciseness, lengths: list[int], training: bool = True) -> list[float | None]:
    return con(["p"] * len(lengths), ["c"] * len(lengths), completion_lengths=lengths, training=training)


def test_running_mean_over_three_training_batches_with_an_eval_batch_between() -> None:
    con = Conciseness()
    # batch 1: the batch itself sets the mean, (10 + 20 + 30 + 40) / 4 = 25; strictly below scores 1
    assert call(con, [10, 20, 30, 40]) == [1.0, 1.0, 0.0, 0.0]
    assert (con.count_, con.total_, con.mean_length) == (4, 100.0, 25.0)
    # eval: compared with 25, state untouched (25 itself is not below the mean)
    assert call(con, [24, 25, 26, 100], training=False) == [1.0, 0.0, 0.0, 0.0]
    assert (con.count_, con.total_) == (4, 100.0)
    # batch 2: (100 + 50 + 10) / 6 = 26.67
    assert call(con, [50, 10]) == [0.0, 1.0]
    assert (con.count_, con.total_) == (6, 160.0)
    # batch 3: (160 + 26 + 27 + 29) / 9 = 242 / 9 = 26.89
    assert call(con, [26, 27, 29]) == [1.0, 0.0, 0.0]
    assert (con.count_, con.total_) == (9, 242.0)
    assert con.mean_length == pytest.approx(242 / 9)


def test_an_evaluation_before_any_training_length_is_compared_with_its_own_mean() -> None:
    """Not 1.0 for everything (a held-out curve starting at a ceiling), and the mean is not learned from it."""
    con = Conciseness()
    assert call(con, [5, 500], training=False) == [1.0, 0.0]  # own mean 252.5
    assert call(con, [10, 20, 30, 40], training=False) == [1.0, 1.0, 0.0, 0.0]  # own mean 25
    assert call(con, [7, 7], training=False) == [0.0, 0.0]  # strictly below: equal lengths are not shorter
    assert con.state_dict() == {} and con.mean_length is None
    assert call(con, []) == []
    assert con.state_dict() == {}


def test_first_training_batch_is_compared_with_its_own_mean() -> None:
    assert call(Conciseness(), [7, 7, 7]) == [0.0, 0.0, 0.0]  # nobody is strictly below the mean
    assert call(Conciseness(), [1, 2]) == [1.0, 0.0]


def test_character_lengths_without_token_lengths_and_training_by_default() -> None:
    con = Conciseness()
    assert con(["p", "p", "p"], ["aa", "aaaa", "aaaaaa"]) == [1.0, 0.0, 0.0]  # mean 4 characters
    assert (con.count_, con.total_) == (3, 12.0)


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(ValueError, match="2 completion_lengths for 1 completions"):
        Conciseness()(["p"], ["c"], completion_lengths=[1, 2])


def test_state_dict_round_trip_continues_the_same_mean() -> None:
    con = Conciseness()
    call(con, [10, 20, 30, 40])
    state = json.loads(json.dumps(con.state_dict()))
    assert state == {"count_": 4, "total_": 100.0}
    fresh = con.clone()
    assert fresh.state_dict() == {}
    fresh.load_state_dict(state)
    assert call(fresh, [24, 26], training=False) == call(con, [24, 26], training=False) == [1.0, 0.0]
    assert call(fresh, [50, 10]) == call(con, [50, 10])
    assert fresh.state_dict() == con.state_dict()


def test_registered_and_scored_through_score_rewards_with_token_lengths() -> None:
    con = build("reward", "conciseness")
    assert isinstance(con, Conciseness) and repr(con) == "Conciseness(call_timeout_s=None)"
    matrix, _ = score_rewards([con], ["p"] * 3, ["a", "b", "c"], {}, training=True, completion_lengths=[3, 9, 6])
    assert matrix[:, 0].tolist() == [1.0, 0.0, 0.0]
    matrix, _ = score_rewards([con], ["p"], ["a"], {}, training=False, completion_lengths=[5])
    assert matrix[:, 0].tolist() == [1.0] and con.count_ == 3


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("\\boxed{}0123456789 \n.")), max_size=300),
    lengths=st.lists(st.integers(0, 10_000), min_size=1, max_size=20),
    training=st.booleans(),
)
def test_fuzz_returns_zero_or_one_quickly(text: str, lengths: list[int], training: bool) -> None:
    con = Conciseness()
    start = time.perf_counter()
    values = con(["p"] * len(lengths), [text] * len(lengths), completion_lengths=lengths, training=training)
    values += con(["p"], [text], training=training)
    assert set(values) <= {0.0, 1.0}
    assert time.perf_counter() - start < 0.1
