"""Accuracy reward: boxed extraction, math-verify equivalence, hostile inputs, time limits, state."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from morl.components import RecipeError, build
from morl.rewards import Accuracy, boxed_answer, boxed_answers, score_rewards
from morl.rewards.accuracy import _KILL_GRACE_S, _canonical, _checker

TIMEOUT_S = 0.5
#: A sample may take its time limit, the kill grace, and a restart of the checker process.
WALL_LIMIT_S = TIMEOUT_S + _KILL_GRACE_S + 1.5


def score(completion: str, gold: object, **params: object) -> float | None:
    return Accuracy(timeout_s=TIMEOUT_S, **params)(["p"], [completion], answer=[gold])[0]


# ---- boxed extraction -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{3}", "3"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed {7}", "7"),
        ("\\boxed\n{7}", "7"),
        (r"\fbox{8}", "8"),
        (r"$\boxed 5$.", "5"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{3} then \boxed{4}", "4"),
        (r"\boxed{3} then \boxed{4", None),  # cut off inside the final answer: no answer
        (r"\boxed{}", ""),
        (r"\boxedx{3}", None),
        ("no box", None),
        (r"\boxed{" + "1" * 2000 + "}", None),  # longer than max_chars
    ],
)
def test_boxed_answer(text: str, expected: str | None) -> None:
    assert boxed_answer(text) == expected


def test_boxed_extraction_is_fast_on_look_alike_commands() -> None:
    start = time.perf_counter()
    assert boxed_answer(r"\boxedx" * 20_000) is None
    assert boxed_answers(r"\boxed{1}" * 32 + r"\fboxy" * 20_000) == ["1"] * 32
    assert time.perf_counter() - start < 0.2


def test_boxed_answers_reads_a_bounded_number_of_boxes_from_the_end() -> None:
    text = "".join(rf"\boxed{{{i}}}" for i in range(100))
    assert boxed_answers(text, max_boxes=3) == ["97", "98", "99"]
    assert boxed_answers(r"\boxed{1} \boxed{ } \boxed{") == ["1", " "]


# ---- equivalence on hand-worked answers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "completion", "expected"),
    [
        (r"\frac{1}{2}", r"The answer is \boxed{0.5}.", 1.0),
        ("0.5", r"so $\boxed{\dfrac{1}{2}}$", 1.0),
        (r"\frac{1}{2}", r"\boxed{1/2}", 1.0),
        (r"\frac{1}{2}", r"\boxed{0.6}", 0.0),
        (r"2\sqrt{2}", r"\boxed{\sqrt{8}}", 1.0),
        (r"2\sqrt{2}", r"\boxed{\sqrt{6}}", 0.0),
        (r"\frac{\sqrt{3}}{3}", r"\boxed{\frac{1}{\sqrt{3}}}", 1.0),
        ("3", r"\boxed{x=3}", 1.0),
        ("3", r"\boxed{x = 4}", 0.0),
        (r"(2,12) \cup (12,102)", r"\boxed{(2, 12)\cup(12, 102)}", 1.0),
        (r"(-\infty, 2) \cup (3, \infty)", r"\boxed{(-\infty,2)\cup(3,\infty)}", 1.0),
        ("[1,2]", r"\boxed{(1,2)}", 0.0),
        ("1,-2", r"\boxed{-2, 1}", 1.0),
        (r"\text{Evelyn}", r"\boxed{\text{Evelyn}}", 1.0),
        (r"\text{Evelyn}", r"\boxed{\text{Bob}}", 0.0),
        ("2k+2", r"\boxed{2(k+1)}", 1.0),
        (r"\begin{pmatrix} -7 \\ 16 \end{pmatrix}", r"\boxed{\begin{pmatrix}-7\\16\end{pmatrix}}", 1.0),
        ("3", r"\boxed{3}", 1.0),
        ("3", r"\boxed{4}", 0.0),
        ("4", r"First \boxed{3}, no wait: \boxed{4}", 1.0),  # the last box counts
        ("3", r"First \boxed{3}, no wait: \boxed{4}", 0.0),
        ("3", r"\boxed {3}", 1.0),
        ("3", r"\fbox{3}", 1.0),
        ("3", r"\boxed{3} and then \boxed{3", 0.0),  # truncated final box
        ("3", "The answer is 3.", 0.0),  # no box
        ("3", r"\boxed{}", 0.0),
        ("3", r"\boxed{ }", 0.0),
        (3, r"\boxed{3}", 1.0),  # non-string ground truth
        ("", r"\boxed{}", 0.0),  # an empty ground truth matches nothing
    ],
)
def test_equivalence(gold: object, completion: str, expected: float) -> None:
    assert score(completion, gold) == expected


def test_missing_ground_truth_is_not_applicable() -> None:
    assert Accuracy()(["p", "p"], [r"\boxed{1}", r"\boxed{1}"], answer=[None, "1"]) == [None, 1.0]


def test_answer_column_is_configurable_and_a_missing_one_is_named() -> None:
    acc = Accuracy(answer_column="solution")
    assert acc(["p"], [r"\boxed{2}"], solution=["2"], answer=["3"]) == [1.0]
    with pytest.raises(KeyError, match=r"'solution' not given; columns present: \['answer'\]"):
        acc(["p"], [r"\boxed{2}"], answer=["2"], completion_lengths=[3], training=True)


def test_column_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="1 values in 'answer' for 2 completions"):
        Accuracy()(["p", "p"], ["a", "b"], answer=["1"])


def test_equal_strings_and_plain_integers_are_decided_without_the_checker(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_checker() -> None:
        raise AssertionError("the checker process was asked")

    monkeypatch.setattr("morl.rewards.accuracy._checker", no_checker)
    completions = [r"\boxed{6}", r"\boxed{7}", r"\boxed{-07}", r"\boxed{ \dfrac{1}{2} }", r"\boxed{\left(1,2\right)}"]
    golds = ["6", "6", "-7", r"\frac{1}{2}", "(1, 2)"]
    assert Accuracy()(["p"] * 5, completions, answer=golds) == [1.0, 0.0, 1.0, 1.0, 1.0]


def test_canonical_form_only_removes_spacing_and_display_variants() -> None:
    assert _canonical(r"\dfrac{1}{ 2 }") == _canonical(r"\frac{1}{2}")
    assert _canonical(r"\left( 1,2 \right)") == "(1,2)"
    assert _canonical("12") != _canonical("1 2 3")
    assert _canonical(r"\leftarrow") != _canonical(r"\rightarrow")


# ---- real MATH-500 ground truths ------------------------------------------------------------------------------


def test_math500_ground_truths_match_themselves_and_not_each_other(math500_rows: list[dict]) -> None:
    golds = [row["reward_model"]["ground_truth"] for row in math500_rows[:50]]
    acc = Accuracy()
    assert acc(["p"] * 50, [rf"So the answer is $\boxed{{{g}}}$." for g in golds], answer=golds) == [1.0] * 50
    # the same pairs through math-verify itself (the string shortcut above skips it)
    assert _checker().check([(g, g) for g in golds], 1.0) == [True] * 50
    shifted = golds[7:] + golds[:7]
    wrong = acc(["p"] * 50, [rf"\boxed{{{g}}}" for g in shifted], answer=golds)
    same = [_canonical(a) == _canonical(b) for a, b in zip(golds, shifted, strict=True)]
    assert sum(wrong) <= sum(same) + 2
    assert all(w == 1.0 for w, s in zip(wrong, same, strict=True) if s)


def test_math500_reference_solutions_are_accurate(math500_rows: list[dict]) -> None:
    rows = math500_rows[50:80]
    golds = [row["reward_model"]["ground_truth"] for row in rows]
    assert Accuracy()(["p"] * 30, [row["solution"] for row in rows], answer=golds) == [1.0] * 30


# ---- hostile inputs, time limits ------------------------------------------------------------------------------

HOSTILE = {
    "10k chars of LaTeX": r"\boxed{" + r"\frac{x^{2}+1}{\sqrt{y}}+" * 400 + "1}",
    "3000 boxes": r"\boxed{1}" * 3000,
    "5000 open boxes": r"\boxed{" * 5000,
    "20000 look-alike commands": r"\boxed{3}" + r"\boxedx{4}" * 20000,
    "deep nesting": r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "deep nesting within the length cap": r"\boxed{" + r"\sqrt{" * 100 + "2" + "}" * 100 + "}",
    "parenthesis tower": r"\boxed{" + "(" * 300 + "1" + ")" * 300 + "}",
    "unbalanced": r"\boxed{\frac{1}{2}" + "}" * 3 + "{" * 1000,
    "huge number": r"\boxed{" + "9" * 990 + "}",
    "power tower": r"\boxed{9^{9^{9}}}",
    "factorial of a million": r"\boxed{(10^{6})!}",
    "lone surrogates": "\\boxed{\ud800\udfff}",
    "non-UTF-8 bytes": b"\\boxed{\xff\xfe\x80}".decode("utf-8", errors="surrogateescape"),
    "NUL and control": "\\boxed{\x00\x01\x1b[31m}",
    "odd unicode": "\\boxed{\u202e\u0663\ufdfd\U0001f600\u00bd}",
    "only a backslash": "\\boxed{\\",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_completion_is_wrong_within_the_time_limit(name: str) -> None:
    acc = Accuracy(timeout_s=TIMEOUT_S)
    acc(["p"], [r"\boxed{1}"], answer=["2"])  # checker process started before the clock runs
    start = time.perf_counter()
    scores = acc(["p"], [HOSTILE[name]], answer=["4"])
    assert time.perf_counter() - start < WALL_LIMIT_S
    assert scores == [0.0]  # a cheap filter's 0, a failed check, or a check cut off at the limit (then counted)
    assert acc.timeouts_ in (0, 1)


def test_a_slow_check_times_out_is_incorrect_and_is_counted() -> None:
    acc = Accuracy(timeout_s=TIMEOUT_S)
    start = time.perf_counter()
    assert acc(["p"] * 3, [r"\boxed{10^{10^{10}}}", r"\boxed{2}", r"\boxed{\dfrac{4}{2}}"], answer=["2"] * 3) == [
        0.0,  # the check did not finish: incorrect, as math-verify and TRL score it
        1.0,
        1.0,
    ]
    assert time.perf_counter() - start < WALL_LIMIT_S
    assert acc.timeouts_ == 1
    assert acc.state_dict() == {"timeouts_": 1}
    assert acc.counters() == {"timeouts": 1.0}  # logged as rewards/accuracy/timeouts


def test_an_answer_built_to_time_out_does_not_escape_the_penalty() -> None:
    """A power tower for a problem whose answer is 1: not applicable, it would be left out of the accuracy
    comparison while a plain wrong answer scores 0; so by default a cut-off check scores 0 and is counted."""
    tower = r"\boxed{10^{10^{10^{10^{10}}}}}"
    acc = Accuracy(timeout_s=TIMEOUT_S)
    assert acc(["p"] * 2, [tower, r"\boxed{2}"], answer=["1"] * 2) == [0.0, 0.0]
    assert acc.timeouts_ == 1
    lenient = Accuracy(timeout_s=TIMEOUT_S, on_timeout="not_applicable")  # the explicit option
    assert lenient(["p"] * 2, [tower, r"\boxed{1}"], answer=["1"] * 2) == [None, 1.0]
    assert lenient.timeouts_ == 1
    assert Accuracy().config.on_timeout == "incorrect"
    with pytest.raises(RecipeError, match="on_timeout"):
        build("reward", {"name": "accuracy", "on_timeout": "skip"})


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")
def test_a_stuck_checker_is_killed_and_restarted() -> None:
    acc = Accuracy(timeout_s=TIMEOUT_S)
    acc(["p"], [r"\boxed{1}"], answer=["2"])
    checker = _checker()
    pid = checker._proc.pid
    os.kill(pid, signal.SIGSTOP)  # like a check stuck in C code: it never answers, not even to its own timer
    start = time.perf_counter()
    assert acc(["p"], [r"\boxed{\sqrt{4}}"], answer=["2"]) == [0.0]  # never answered: incorrect, counted
    assert TIMEOUT_S <= time.perf_counter() - start < WALL_LIMIT_S
    assert acc.timeouts_ == 1
    assert acc(["p"], [r"\boxed{\sqrt{4}}"], answer=["2"]) == [1.0]  # a fresh checker took over
    assert checker._proc.pid != pid


def test_works_outside_the_main_thread() -> None:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(score(r"\boxed{\sqrt{8}}", r"2\sqrt{2}")))
    thread.start()
    thread.join(timeout=30)
    assert out == [1.0]


# ---- component contract ---------------------------------------------------------------------------------------


def test_no_state_before_first_call_and_state_dict_round_trip() -> None:
    acc = Accuracy(timeout_s=0.25)
    assert acc.state_dict() == {}
    acc.timeouts_ = 3
    state = json.loads(json.dumps(acc.state_dict()))
    fresh = acc.clone()
    assert fresh.state_dict() == {}
    fresh.load_state_dict(state)
    assert fresh.timeouts_ == 3
    fresh(["p"], ["no box"], answer=["1"])
    assert fresh.timeouts_ == 3
    assert (
        repr(fresh) == "Accuracy(call_timeout_s=None, answer_column='answer', timeout_s=0.25, on_timeout='incorrect', "
        "max_answer_chars=1000)"
    )


def test_config_is_validated() -> None:
    with pytest.raises(RecipeError, match="timeout_s"):
        Accuracy(timeout_s=0)
    with pytest.raises(RecipeError, match="unknown field"):
        Accuracy(timeout=1)


def test_registered_and_usable_through_score_rewards() -> None:
    acc = build("reward", {"name": "accuracy", "timeout_s": 2.0})
    assert isinstance(acc, Accuracy) and acc.config.timeout_s == 2.0
    matrix, skipped = score_rewards(
        [acc], ["p", "p"], [r"\boxed{1}", r"\boxed{2}"], {"answer": ["1", "1"]}, training=True
    )
    assert matrix[:, 0].tolist() == [1.0, 0.0] and skipped == {"accuracy": 0}


# ---- fuzz -----------------------------------------------------------------------------------------------------

TOKENS = [
    "\\boxed{",
    "\\boxed",
    "\\fbox{",
    "{",
    "}",
    "\\",
    "\\frac",
    "^",
    "_",
    "1",
    "2",
    "9",
    "0",
    ".",
    "x",
    "=",
    "(",
    ")",
    "[",
    "]",
    ",",
    "-",
    "+",
    " ",
    "\n",
    "$",
    "\\sqrt",
    "!",
    "e",
    "\u00e9",
    "\ud800",
    "\x00",
]


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.sampled_from(TOKENS), max_size=60), gold=st.sampled_from(["1", "2", r"\frac{1}{2}", "x"]))
def test_fuzz_returns_zero_or_one_quickly(parts: list[str], gold: str) -> None:
    start = time.perf_counter()
    value = score("".join(parts), gold)
    assert value in (0.0, 1.0)
    assert time.perf_counter() - start < WALL_LIMIT_S
