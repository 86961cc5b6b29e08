"""TinyMath problems, splits and solution styles.

The reward checks below are inline regexes written from the paper's rules (morl.rewards is tested on its own):
each style must win and lose the rewards it was designed to, or the interference demo has no cheap mode.
"""

from __future__ import annotations

import random
import re

import pytest

from morl.tinymath.task import (
    DEFAULT_MIXTURE,
    STYLES,
    all_triples,
    classify_style,
    extract_boxed,
    make_problems,
    make_sft_data,
    make_split,
    write_solution,
)

ENUMERATOR = re.compile(r"^\s*(?:\d+[.)]|Step\s*\d+:|[a-z]\)|[-*•])(?=\s|$)", re.MULTILINE)
ORDINAL = re.compile(r"\b(?:first|second|third|next|then|finally)\b", re.IGNORECASE)


def accurate(text: str, answer: str) -> bool:
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return bool(boxed) and boxed[-1].strip() == answer


def clear(text: str) -> bool:
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    structured = len(ENUMERATOR.findall(text)) >= 2 or len(ORDINAL.findall(text)) >= 2
    return bool(boxed) and bool(boxed[-1].strip()) and structured


def test_answers_are_correct() -> None:
    for problem in make_problems(300, seed=3):
        a, b, c = (int(x) for x in re.findall(r"\d+", problem["prompt"]))
        assert problem["answer"] == str(a + b - c)
        assert max(a, b, c) <= 9 and a + b - c >= 0
        assert problem["prompt"].endswith("\n") and 25 <= len(problem["prompt"]) <= 64


def test_deterministic() -> None:
    assert make_problems(20, seed=1) == make_problems(20, seed=1)
    assert make_problems(20, seed=1) != make_problems(20, seed=2)
    assert make_split("eval", 20, seed=5) == make_split("eval", 20, seed=5)
    assert make_sft_data(20, seed=5) == make_sft_data(20, seed=5)


def test_splits_are_disjoint() -> None:
    def triples(problems: list[dict[str, str]]) -> set[tuple[int, ...]]:
        return {tuple(int(x) for x in re.findall(r"\d+", p["prompt"])) for p in problems}

    train = triples(make_split("train", 3000, seed=0)) | triples(make_split("train", 3000, seed=1))
    evals = triples(make_split("eval", 1000, seed=0)) | triples(make_split("eval", 1000, seed=1))
    assert not train & evals
    assert len(train) + len(evals) == len(all_triples())  # every triple is reachable from one split
    with pytest.raises(ValueError, match="split"):
        make_split("test", 1, seed=0)


@pytest.mark.parametrize(
    ("style", "want_accurate", "want_clear"),
    [
        ("steps", 1.0, 1.0),
        ("steps_slip", 0.0, 1.0),
        ("terse", 0.5, 0.0),
        ("empty_steps", 0.1, 1.0),
        ("filler", 0.5, 0.0),
    ],
)
def test_styles_get_intended_rewards(style: str, want_accurate: float, want_clear: float) -> None:
    rng = random.Random(0)
    problems = make_split("train", 400, seed=0)
    texts = [write_solution(p, style, rng) for p in problems]
    acc = sum(accurate(t, p["answer"]) for t, p in zip(texts, problems, strict=True)) / len(texts)
    assert acc == pytest.approx(want_accurate, abs=0.1)
    assert sum(map(clear, texts)) / len(texts) == want_clear
    assert all(classify_style(t) == style for t in texts)


def test_lengths_make_steps_long_and_cheap_modes_short() -> None:
    """Conciseness is 'shorter than the running mean': steps and filler must be above it, cheap modes below."""
    data = make_sft_data(2000, seed=0)
    mean = sum(len(d["completion"]) for d in data) / len(data)
    by_style = {s: [len(d["completion"]) for d in data if d["style"] == s] for s in STYLES}
    assert min(by_style["steps"]) > mean and min(by_style["filler"]) > mean
    assert max(by_style["terse"]) < mean and max(by_style["empty_steps"]) < mean
    shares = {s: len(v) / len(data) for s, v in by_style.items()}
    assert shares == pytest.approx(DEFAULT_MIXTURE, abs=0.03)


def test_classify_and_extract() -> None:
    assert extract_boxed("a \\boxed{1} b \\boxed{ 23 }") == "23"
    assert extract_boxed("no answer") is None
    assert classify_style("1. 2+3=5\n2. 5-1=4\n\\boxed{4}") == "steps"
    assert classify_style("Step 1: 2+3=6\nStep 2: 6-1=5\n\\boxed{5}") == "steps_slip"
    assert classify_style("1.\n2.\n\\boxed{4}") == "empty_steps"
    assert classify_style("\\boxed{4}") == "terse"
    assert classify_style("I think it is \\boxed{4}") == "filler"
    assert classify_style("1. 2+3=5") == "other"
    with pytest.raises(ValueError, match="style"):
        write_solution(make_problems(1, seed=0)[0], "poem", random.Random(0))
