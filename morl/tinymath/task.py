"""TinyMath: short ``a + b - c`` word problems and solutions in mixed styles.

The styles are chosen so that the three paper rewards (accuracy, conciseness, clarity) pull apart:

============  ========  =======  =====  ==================================================
style         accurate  concise  clear  example
============  ========  =======  =====  ==================================================
steps         yes       no       yes    ``1. Add: 3+5=8\\n2. Subtract: 8-2=6\\n\\boxed{6}``
steps_slip    no        no       yes    ``1. Add: 3+5=9\\n2. Subtract: 9-2=7\\n\\boxed{7}``
terse         half      yes      no     ``\\boxed{6}``
empty_steps   rarely    yes      yes    ``1.\\n2.\\n\\boxed{7}`` (the cheap mode)
filler        half      no       no     ``Let me think about this.\\nThe answer is \\boxed{6}``
============  ========  =======  =====  ==================================================

``empty_steps`` is the cheap mode: it wins two rewards out of three, so equal weights collapse onto it and
accuracy falls while conciseness and clarity rise — the cross-objective interference morl is built to show.

Example:
    >>> p = make_problems(1, seed=0)[0]
    >>> sorted(p)
    ['answer', 'prompt']
    >>> extract_boxed(write_solution(p, "steps", random.Random(0))) == p["answer"]
    True
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

NAMES = ["Ann", "Bob", "Cy", "Dee", "Eve", "Max", "Sam", "Tom", "Lu", "Kim"]
OBJECTS = ["pens", "cats", "cups", "eggs", "coins", "apples", "books", "stars", "cards", "hats"]
TEMPLATES = [
    "{name} has {a} {obj}, gets {b}, loses {c}. How many?\n",
    "{name} had {a} {obj}, found {b}, gave away {c}. How many now?\n",
    "A box has {a} {obj}. Add {b}, remove {c}. How many?\n",
    "{name} buys {a} {obj} and {b} more, sells {c}. How many left?\n",
    "{a} {obj} on a shelf, {b} added, {c} taken. How many?\n",
    "{name} asks: what is {a} + {b} - {c}?\n",
]
STYLES = ["steps", "steps_slip", "terse", "empty_steps", "filler"]
FILLERS = [
    "Let me think about this.\nThe answer is ",
    "Hmm, let me see here.\nI would say ",
    "Okay, this looks easy.\nSo it is ",
    "Well, let me think.\nMy answer is ",
]
#: SFT mixture of the warm-start: mostly correct steps (greedy decoding stays accurate) with every other style
#: common enough to be sampled at temperature 1.
DEFAULT_MIXTURE = {"steps": 0.50, "steps_slip": 0.05, "terse": 0.15, "empty_steps": 0.15, "filler": 0.15}
#: Probability that a style that does not compute still states the right answer.
GUESS_CORRECT = {"terse": 0.5, "filler": 0.5, "empty_steps": 0.1}
MAX_GUESS = 18

Triple = tuple[int, int, int]
_EVAL_FRACTION = 0.2


def all_triples() -> list[Triple]:
    """Every ``(a, b, c)`` with digits 1-9 and a non-negative answer ``a + b - c`` (645 in all)."""
    return [(a, b, c) for a in range(1, 10) for b in range(1, 10) for c in range(1, 10) if c <= a + b]


def _split_triples() -> dict[str, list[Triple]]:
    """A fixed train/eval partition of the triples, independent of any seed, so splits never overlap."""
    triples = all_triples()
    random.Random(1234).shuffle(triples)
    n_eval = round(_EVAL_FRACTION * len(triples))
    return {"eval": sorted(triples[:n_eval]), "train": sorted(triples[n_eval:])}


def _problem(triple: Triple, rng: random.Random) -> dict[str, str]:
    a, b, c = triple
    template = rng.choice(TEMPLATES)
    prompt = template.format(name=rng.choice(NAMES), obj=rng.choice(OBJECTS), a=a, b=b, c=c)
    return {"prompt": prompt, "answer": str(a + b - c)}


def make_problems(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` problems drawn from all triples (both splits); deterministic in ``seed``."""
    rng = random.Random(seed)
    triples = all_triples()
    return [_problem(rng.choice(triples), rng) for _ in range(n)]


def make_split(split: str, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` problems from the ``"train"`` or ``"eval"`` split; the two splits share no ``(a, b, c)``."""
    triples = _split_triples().get(split)
    if triples is None:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = random.Random(f"{split}-{seed}")
    return [_problem(rng.choice(triples), rng) for _ in range(n)]


def parse_numbers(prompt: str) -> Triple:
    """The three numbers of a prompt, in order: ``a``, ``b``, ``c``."""
    a, b, c = (int(x) for x in re.findall(r"\d+", prompt))
    return a, b, c


def _guess(answer: int, style: str, rng: random.Random) -> int:
    return answer if rng.random() < GUESS_CORRECT[style] else rng.randint(0, MAX_GUESS)


def write_solution(problem: dict[str, str], style: str, rng: random.Random) -> str:
    """A completion for ``problem`` in ``style`` (one of :data:`STYLES`); no trailing EOS."""
    a, b, c = parse_numbers(problem["prompt"])
    total, answer = a + b, a + b - c
    if style in ("steps", "steps_slip"):
        if style == "steps_slip":
            slip, in_sum = rng.choice([-2, -1, 1, 2]), rng.random() < 0.5
            if answer + slip < 0:  # keep every number non-negative
                slip = -slip
            if in_sum:  # a wrong sum, carried correctly into the second step
                total += slip
            answer += slip
        s1, s2 = f"{a}+{b}={total}", f"{total}-{c}={answer}"
        form = rng.random()
        if form < 0.7:
            body = f"1. Add: {s1}\n2. Subtract: {s2}\n"
        elif form < 0.85:
            body = f"Step 1: {s1}\nStep 2: {s2}\n"
        else:
            body = f"First {s1}.\nThen {s2}.\n"
        return body + f"\\boxed{{{answer}}}"
    if style == "terse":
        return f"\\boxed{{{_guess(answer, style, rng)}}}"
    if style == "empty_steps":
        return f"1.\n2.\n\\boxed{{{_guess(answer, style, rng)}}}"
    if style == "filler":
        return rng.choice(FILLERS) + f"\\boxed{{{_guess(answer, style, rng)}}}"
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def make_sft_data(
    n: int, seed: int, mixture: dict[str, float] | None = None, split: str = "train"
) -> list[dict[str, str]]:
    """``n`` supervised examples ``{"prompt", "completion", "answer", "style"}`` with styles drawn from ``mixture``."""
    rng = random.Random(f"sft-{seed}")
    return draw_sft_examples(make_split(split, n, seed), mixture or DEFAULT_MIXTURE, rng, write_solution)


def draw_sft_examples(
    problems: list[dict[str, str]],
    mixture: dict[str, float],
    rng: random.Random,
    write: Callable[[dict[str, str], str, random.Random], str],
) -> list[dict[str, str]]:
    """Each problem with a style drawn from ``mixture`` and its solution in that style, written by ``write``: the
    supervised warm-start data of every embedded task."""
    styles, weights = list(mixture), list(mixture.values())
    data = []
    for problem in problems:
        style = rng.choices(styles, weights)[0]
        data.append({**problem, "completion": write(problem, style, rng), "style": style})
    return data


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (no nested braces needed here), or ``None``."""
    found = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return found[-1].strip() if found else None


_ENUM = re.compile(r"^\s*(?:\d+[.)]|step\s*\d+\s*:?|[a-z][.)]|[-*•])(?=\s|$)", re.IGNORECASE | re.MULTILINE)
_ORDINAL = re.compile(r"\b(?:first|second|third|next|then|finally)\b", re.IGNORECASE)
_EQUATION = re.compile(r"(\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)")


def classify_style(text: str) -> str:
    """The style a completion looks like, from its text alone; ``"other"`` when none fits.

    Steps whose equations are all right are ``steps``, any wrong equation makes ``steps_slip``;
    enumerated lines without equations are ``empty_steps``.
    """
    if extract_boxed(text) is None:
        return "other"
    structured = len(_ENUM.findall(text)) >= 2 or len(_ORDINAL.findall(text)) >= 2
    equations = _EQUATION.findall(text)
    if structured and equations:
        ok = all((int(x) + int(y) if op == "+" else int(x) - int(y)) == int(z) for x, op, y, z in equations)
        return "steps" if ok else "steps_slip"
    if structured:
        return "empty_steps"
    if equations:
        return "other"
    outside = re.sub(r"\\boxed\{[^{}]*\}", "", text).strip()
    return "filler" if outside else "terse"
