"""brevity: ``scale * max(0, 1 - chars / max_chars)``, on a fixed ruler of characters."""

from __future__ import annotations

import pytest

from morl.components import RecipeError, build
from morl.rewards import Brevity


@pytest.mark.parametrize(
    ("completion", "max_chars", "scale", "expected"),
    [
        ("", 24, 10.0, 10.0),
        ("1", 24, 10.0, 10.0 * 23 / 24),  # TinySort's head mode: 9.58
        ("1 3 7 9", 24, 10.0, 10.0 * 17 / 24),  # a 4-digit plain answer: 7.08
        ("1 2 3 4 5 6", 24, 10.0, 10.0 * 13 / 24),  # 6 digits: 5.42
        ("x" * 24, 24, 10.0, 0.0),  # max_chars on: 0
        ("x" * 100, 24, 10.0, 0.0),  # never negative
        ("12345", 10, 1.0, 0.5),
        (" 1 \n", 8, 2.0, 1.0),  # whitespace is characters too
    ],
)
def test_hand_worked(completion: str, max_chars: int, scale: float, expected: float) -> None:
    [got] = Brevity(max_chars=max_chars, scale=scale)(["p"], [completion])
    assert got == pytest.approx(expected)


def test_characters_not_tokens() -> None:
    """A fixed ruler: the token lengths the pipeline passes are ignored, so any tokenizer scores alike."""
    assert Brevity()(["p"], ["1 3"], completion_lengths=[99]) == pytest.approx([10.0 * 21 / 24])


def test_registered_and_validated() -> None:
    reward = build("reward", {"name": "brevity", "max_chars": 12})
    assert isinstance(reward, Brevity) and reward.objective_name() == "brevity"
    assert not reward.moving_target
    for bad in ({"max_chars": 0}, {"scale": 0.0}, {"scale": float("nan")}):
        with pytest.raises(RecipeError):
            build("reward", {"name": "brevity", **bad})
