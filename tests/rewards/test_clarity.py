"""Clarity reward: a non-empty box and two steps, with bounded regexes."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from morl.components import build
from morl.rewards import Clarity


def clarity(text: str) -> float | None:
    return Clarity()(["p"], [text])[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1. Add: 3+5=8\n2. Subtract: 8-2=6\n\\boxed{6}", 1.0),
        ("1) add\n2) subtract\n\\boxed{6}", 1.0),
        ("(1) add\n(2) subtract\n$\\boxed{6}$", 1.0),
        ("Step 1: add\nStep 2: subtract\n\\boxed{6}", 1.0),
        ("**Step 1:** add\n**Step 2:** subtract\n\\boxed{6}", 1.0),
        ("## Step 1\nadd\n## Step 2\nsubtract\n\\boxed{6}", 1.0),
        ("a) add\nb) subtract\n\\boxed{6}", 1.0),
        ("  i. add\n  ii. subtract\n\\boxed{6}", 1.0),
        ("- add\n- subtract\n\\boxed{6}", 1.0),
        ("* add\n* subtract\n\\boxed{6}", 1.0),
        ("\u2022 add\n\u2022 subtract\n\\boxed{6}", 1.0),
        ("First add, then subtract: \\boxed{6}", 1.0),
        ("Firstly we add. Secondly we subtract. \\boxed{6}", 1.0),
        ("Then then \\boxed{6}", 1.0),  # repeats count
        ("1.\n2.\n\\boxed{7}", 1.0),  # numbered but empty steps: the cheap mode passes
        ("1. add\n\\boxed{6}", 0.0),  # one step
        ("First add: \\boxed{6}", 0.0),  # one ordinal
        ("1. add\nthen subtract\n\\boxed{6}", 0.0),  # one of each kind does not add up to two
        ("1. add\n2. subtract\n\\boxed{}", 0.0),  # empty box
        ("1. add\n2. subtract\n\\boxed{  }", 0.0),  # blank box
        ("1. add\n2. subtract\nthe answer is 6", 0.0),  # no box
        ("1. add\n2. subtract\n\\boxed{6", 0.0),  # unclosed box
        ("1. add\n2. subtract\n\\boxed{6}\\boxed{}", 1.0),  # a non-empty box anywhere is enough
        ("x = 3 - 1. y = 2. So \\boxed{2}", 0.0),  # "1." mid-line is not an enumerator
        ("1.5\n2.5\n\\boxed{4}", 0.0),  # decimals at line start are not enumerators
        ("---\n---\n\\boxed{4}", 0.0),  # rules are not bullets
        ("-3 + 5\n-2\n\\boxed{4}", 0.0),  # negative numbers are not bullets
        ("firstborn, thence, nextdoor \\boxed{4}", 0.0),  # whole words only
        ("", 0.0),
    ],
)
def test_rule(text: str, expected: float) -> None:
    assert clarity(text) == expected


def test_agrees_with_the_tinymath_styles() -> None:
    task = pytest.importorskip("morl.tinymath.task")
    expected = {"steps": 1.0, "steps_slip": 1.0, "terse": 0.0, "empty_steps": 1.0, "filler": 0.0}
    rng = random.Random(0)
    for problem in task.make_problems(40, seed=1):
        for style, value in expected.items():
            assert clarity(task.write_solution(problem, style, rng)) == value, style


@pytest.mark.parametrize(
    "text",
    [
        " " * 100_000 + "1." * 50_000,
        ("\n" + "(" * 8 + "1" * 8) * 10_000,
        ("\n**Step" + " " * 50 + "x") * 5_000,
        "\n".join(["- "] * 50_000),
        "first" * 40_000 + "\\boxed{" * 5_000,
        "\\boxed{" * 20_000 + "}" * 20_000,
        "\\boxedx" * 20_000 + "\\fboxy" * 20_000,
    ],
)
def test_adversarial_text_is_scored_in_linear_time(text: str) -> None:
    start = time.perf_counter()
    assert clarity(text) in (0.0, 1.0)
    assert time.perf_counter() - start < 0.5


def test_stateless_and_registered() -> None:
    cla = build("reward", "clarity")
    assert isinstance(cla, Clarity) and repr(cla) == "Clarity(call_timeout_s=None)"
    cla(["p"], ["1.\n2.\n\\boxed{1}"], training=True, completion_lengths=[5], answer=["1"])
    assert cla.state_dict() == {}


TOKENS = [
    "\\boxed{",
    "\\fbox{",
    "{",
    "}",
    "\\",
    "1",
    "2",
    ".",
    ")",
    "(",
    "\n",
    " ",
    "Step ",
    "step",
    "first",
    "then",
    "Next",
    "-",
    "*",
    "\u2022",
    "a",
    "x",
    "#",
    ">",
    "**",
    "\t",
    "\ud800",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=80))
def test_fuzz_returns_zero_or_one_quickly(parts: list[str]) -> None:
    start = time.perf_counter()
    assert clarity("".join(parts)) in (0.0, 1.0)
    assert time.perf_counter() - start < 0.1
