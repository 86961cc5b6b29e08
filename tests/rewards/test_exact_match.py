"""exact_match: the stripped completion (or the last match of a pattern in it) equals the ground truth."""

from __future__ import annotations

import pytest

from morl.components import RecipeError, build
from morl.rewards import ExactMatch, score_rewards

LIST = r"[1-9](?: [1-9])*"


@pytest.mark.parametrize(
    ("completion", "answer", "pattern", "expected"),
    [
        ("1 3 7 9", "1 3 7 9", None, 1.0),
        ("  1 3 7 9\n", "1 3 7 9 ", None, 1.0),  # both sides stripped
        ("1 3 7 9.", "1 3 7 9", None, 0.0),  # nothing else normalised
        ("1  3 7 9", "1 3 7 9", None, 0.0),
        ("1", "1 3 7 9", None, 0.0),
        ("", "1 3 7 9", None, 0.0),
        ("Sorted, that is 1 3 7 9. Done.", "1 3 7 9", None, 0.0),
        ("Sorted, that is 1 3 7 9. Done.", "1 3 7 9", LIST, 1.0),
        ("1 3 9 7, no: 1 3 7 9", "1 3 7 9", LIST, 1.0),  # the last match counts
        ("1 3 7 9, no: 1 3 9 7", "1 3 7 9", LIST, 0.0),
        ("no digits at all", "1 3 7 9", LIST, 0.0),
        ("Paris", "Paris", None, 1.0),
        ("paris", "Paris", None, 0.0),  # case matters
    ],
)
def test_hand_worked(completion: str, answer: str, pattern: str | None, expected: float) -> None:
    assert ExactMatch(pattern=pattern)(["p"], [completion], answer=[answer]) == [expected]


def test_answer_column_and_missing_truth() -> None:
    em = ExactMatch(answer_column="label")
    assert em.required_columns() == ["label"]
    assert em(["p"] * 3, ["a", "b", "c"], label=["a", None, 3]) == [1.0, None, 0.0]
    assert em(["p"], ["3"], label=[3]) == [1.0]  # a non-string truth is compared as text
    with pytest.raises(KeyError, match="'label' not given; columns present: \\['answer'\\]"):
        em(["p"], ["a"], answer=["a"])
    with pytest.raises(ValueError, match="2 values in 'label' for 1 completions"):
        em(["p"], ["a"], label=["a", "b"])


def test_registered_and_validated() -> None:
    em = build("reward", {"name": "exact_match", "pattern": LIST})
    assert isinstance(em, ExactMatch) and em.objective_name() == "exact_match"
    with pytest.raises(RecipeError, match="not a regular expression"):
        build("reward", {"name": "exact_match", "pattern": "[1-9"})


def test_through_the_pipeline_scorer() -> None:
    matrix, skipped = score_rewards(
        [ExactMatch()], ["p"] * 2, ["x", "y"], {"answer": ["x", None]}, training=True, timeout_s=None
    )
    assert matrix[0, 0].item() == 1.0 and matrix[1, 0].isnan() and skipped == {"exact_match": 0}
