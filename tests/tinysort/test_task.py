"""TinySort problems, splits and completion styles, scored by the real rewards of its recipes.

Each style must win and lose the rewards the module's table says, and equal raw weights must favour the cheap
``head`` mode by scale alone, or the task has no trap to show.
"""

from __future__ import annotations

import random
import re
from statistics import mean

import pytest

from morl.rewards import Brevity, ExactMatch
from morl.tinysort.task import (
    ANSWER_PATTERN,
    DEFAULT_MIXTURE,
    MAX_DIGITS,
    MIN_DIGITS,
    STYLES,
    all_multisets,
    classify_style,
    extract_list,
    make_problems,
    make_sft_data,
    make_split,
    parse_digits,
    write_solution,
)

#: The recipes' exact_match: the last digit list, so a verbose answer counts.
EXACT = ExactMatch(pattern=ANSWER_PATTERN)


def multiset(problem: dict[str, str]) -> tuple[int, ...]:
    return tuple(sorted(parse_digits(problem["prompt"])))


def test_problems_are_well_formed() -> None:
    for problem in make_problems(500, seed=3):
        digits = parse_digits(problem["prompt"])
        assert re.fullmatch(r"sort: [1-9](?: [1-9]){2,5}\n", problem["prompt"])
        assert MIN_DIGITS <= len(digits) <= MAX_DIGITS and len(set(digits)) > 1
        assert problem["answer"] == " ".join(map(str, sorted(digits)))
        assert digits != sorted(digits)
        assert classify_style(" ".join(map(str, digits)), problem["prompt"]) == "echo"  # never plain nor slip


def test_deterministic() -> None:
    assert make_problems(20, seed=1) == make_problems(20, seed=1)
    assert make_problems(20, seed=1) != make_problems(20, seed=2)
    assert make_split("eval", 20, seed=5) == make_split("eval", 20, seed=5)
    assert make_split("train", 20, seed=5) != make_split("train", 20, seed=6)
    assert make_sft_data(20, seed=5) == make_sft_data(20, seed=5)


def test_splits_are_disjoint() -> None:
    train = {multiset(p) for seed in (0, 1) for p in make_split("train", 3000, seed)}
    evals = {multiset(p) for seed in (0, 1) for p in make_split("eval", 1000, seed)}
    assert not train & evals
    assert (train | evals) <= set(all_multisets())
    assert len(all_multisets()) == 4914
    with pytest.raises(ValueError, match="split"):
        make_split("test", 1, seed=0)


@pytest.mark.parametrize(
    ("style", "want_exact", "want_brevity"),
    [
        ("plain", 1.0, (5.4, 7.95)),
        ("verbose", 1.0, (0.0, 0.0)),
        ("slip", 0.0, (5.4, 7.95)),
        ("echo", 0.0, (5.4, 7.95)),
        ("head", 0.0, (9.58, 9.59)),
    ],
)
def test_styles_get_the_rewards_of_the_table(style: str, want_exact: float, want_brevity: tuple[float, float]) -> None:
    rng = random.Random(0)
    problems = make_split("train", 300, seed=0)
    prompts = [p["prompt"] for p in problems]
    texts = [write_solution(p, style, rng) for p in problems]
    exact = EXACT(prompts, texts, answer=[p["answer"] for p in problems])
    brevity = Brevity()(prompts, texts)
    assert set(exact) == {want_exact}
    low, high = want_brevity
    assert all(low <= b <= high for b in brevity), (min(brevity), max(brevity))
    assert all(classify_style(t, p) == style for t, p in zip(texts, prompts, strict=True))
    if style == "verbose":  # right only to a reward that reads the list out of the words
        assert set(ExactMatch()(prompts, texts, answer=[p["answer"] for p in problems])) == {0.0}


def test_equal_raw_weights_favour_the_cheap_mode_by_scale() -> None:
    """Mean ``0.5 * exact_match + 0.5 * brevity`` per style: head beats plain at scale 10 and loses at scale 1."""
    problems = make_split("train", 400, seed=1)
    prompts, answers = [p["prompt"] for p in problems], [p["answer"] for p in problems]

    def score(style: str, scale: float) -> float:
        rng = random.Random(0)
        texts = [write_solution(p, style, rng) for p in problems]
        exact = EXACT(prompts, texts, answer=answers)
        brevity = Brevity(scale=scale)(prompts, texts)
        return mean(0.5 * e + 0.5 * b for e, b in zip(exact, brevity, strict=True))

    raw = {style: score(style, 10.0) for style in STYLES}
    assert max(raw, key=raw.get) == "head"
    assert raw["head"] > raw["plain"] > max(raw["slip"], raw["echo"]) > raw["verbose"]
    rescaled = {style: score(style, 1.0) for style in STYLES}
    assert max(rescaled, key=rescaled.get) == "plain"


def test_mixture_shares() -> None:
    data = make_sft_data(4000, seed=0)
    shares = {s: sum(d["style"] == s for d in data) / len(data) for s in STYLES}
    assert shares == pytest.approx(DEFAULT_MIXTURE, abs=0.03)
    assert all(classify_style(d["completion"], d["prompt"]) == d["style"] for d in data)


def test_classify_and_errors() -> None:
    prompt = "sort: 7 3 9 1\n"
    assert classify_style("1 3 7 9", prompt) == "plain"
    assert classify_style(" 1 3 7 9\n", prompt) == "plain"
    assert classify_style("In order: 1 3 7 9. All done.", prompt) == "verbose"
    assert classify_style("3 1 7 9", prompt) == "slip"
    assert classify_style("7 3 9 1", prompt) == "echo"
    assert classify_style("1", prompt) == "head"
    assert classify_style("9", prompt) == "other"
    assert classify_style("1 3 7", prompt) == "other"
    assert classify_style("In order: 1 3 9 7. All done.", prompt) == "other"
    assert extract_list("Sorted, that is 1 3 7 9. Done.") == "1 3 7 9"
    assert extract_list("1 3, or 2 4 5") == "2 4 5" and extract_list("none") is None
    with pytest.raises(ValueError, match="style"):
        write_solution(make_problems(1, seed=0)[0], "poem", random.Random(0))
