"""TinySort: sort 3-6 digits; completion styles whose two rewards sit on different scales.

A prompt is ``"sort: 7 3 9 1\\n"``: 3-6 digits 1-9, repeats allowed, at least two distinct, never in order nor one
adjacent swap from it (so ``echo`` is never right, nor a ``slip``). The ``answer`` column is ``"1 3 7 9"``. The
rewards of the recipes are ``exact_match`` reading the last digit list of the completion (0/1; a verbose answer
counts as right) and ``brevity``, ``10 * max(0, 1 - chars / 24)`` (0-10; 7.9 to 5.4 for a plain 3- to 6-digit
list):

=======  ===========  =======  ======================================  ======================================
style    exact_match  brevity  example for ``sort: 7 3 9 1``           role
=======  ===========  =======  ======================================  ======================================
plain    1            5.4-7.9  ``1 3 7 9``                             the healthy optimum: right and short
verbose  1            0        ``Sorted, that is 1 3 7 9. Done.``      right but long
slip     0            5.4-7.9  ``1 3 9 7``                             one adjacent swap: wrong, plain length
echo     0            5.4-7.9  ``7 3 9 1``                             the input order: wrong, plain length
head     0            9.6      ``1``                                   the cheap mode: the smallest digit only
=======  ===========  =======  ======================================  ======================================

``head`` is the cheap mode, and it wins by *scale*: under equal raw weights (0.5 each) it scores
``0.5 * 9.6 = 4.8`` against ``0.5 + 0.5 * 7.1 = 4.0`` for ``plain`` on a 4-digit list, because brevity's spread
(0-10) dwarfs exact_match's (0/1). TinyMath's cheap mode wins by *majority* instead (two 0/1 rewards of three).
On a 0-1 brevity scale ``plain`` would win (0.85 against 0.48).

Example:
    >>> p = make_split("eval", 1, seed=0)[0]
    >>> sorted(p)
    ['answer', 'prompt']
    >>> write_solution(p, "plain", random.Random(0)) == p["answer"]
    True
    >>> classify_style("1", "sort: 7 3 9 1\\n"), classify_style("1 3 9 7", "sort: 7 3 9 1\\n")
    ('head', 'slip')
"""

from __future__ import annotations

import itertools
import random
import re

from morl.tinymath.task import draw_sft_examples

STYLES = ["plain", "verbose", "slip", "echo", "head"]
#: SFT mixture of the warm-start: mostly plain (greedy decoding sorts correctly) with every other style common
#: enough to be sampled at temperature 1.
DEFAULT_MIXTURE = {"plain": 0.45, "verbose": 0.20, "slip": 0.10, "echo": 0.10, "head": 0.15}
#: ``{}`` is the sorted list; every wrapper is long enough that brevity is 0 at the default 24 characters.
VERBOSE = ["Sorted, that is {}. Done.", "In order: {}. All done.", "Smallest first: {}. Done."]
MIN_DIGITS, MAX_DIGITS = 3, 6

Digits = tuple[int, ...]
_EVAL_FRACTION = 0.2
#: What the recipes' ``exact_match`` compares (its ``pattern``): the last list of digits in the completion.
ANSWER_PATTERN = r"[1-9](?: [1-9])*"
_LIST = re.compile(ANSWER_PATTERN)


def all_multisets() -> list[Digits]:
    """Every sorted tuple of 3-6 digits 1-9 with at least two distinct digits (4,914 in all)."""
    return [
        combo
        for n in range(MIN_DIGITS, MAX_DIGITS + 1)
        for combo in itertools.combinations_with_replacement(range(1, 10), n)
        if len(set(combo)) > 1
    ]


def _split_multisets() -> dict[str, frozenset[Digits]]:
    """A fixed train/eval partition of the multisets, independent of any seed: an eval answer is never trained on."""
    multisets = all_multisets()
    random.Random(1234).shuffle(multisets)
    n_eval = round(_EVAL_FRACTION * len(multisets))
    return {"eval": frozenset(multisets[:n_eval]), "train": frozenset(multisets[n_eval:])}


_SPLITS = _split_multisets()


def _digits(rng: random.Random, allowed: frozenset[Digits]) -> list[int]:
    """Digits drawn one by one (length uniform in 3-6) until their multiset is in ``allowed``, in an unsorted order."""
    while True:
        digits = [rng.randint(1, 9) for _ in range(rng.randint(MIN_DIGITS, MAX_DIGITS))]
        if tuple(sorted(digits)) in allowed:
            break
    while _near_sorted(digits):  # some order is far enough: 3+ digits, at least two distinct
        rng.shuffle(digits)
    return digits


def _slips(ordered: list[int]) -> list[list[int]]:
    """Every list one swap of two adjacent, unequal digits away from ``ordered``."""
    out = []
    for i in range(len(ordered) - 1):
        if ordered[i] != ordered[i + 1]:
            out.append([*ordered[:i], ordered[i + 1], ordered[i], *ordered[i + 2 :]])
    return out


def _near_sorted(digits: list[int]) -> bool:
    """In order, or one adjacent swap from it: such a prompt would make ``echo`` coincide with ``plain`` or ``slip``."""
    ordered = sorted(digits)
    return digits == ordered or digits in _slips(ordered)


def _problem(digits: list[int]) -> dict[str, str]:
    return {"prompt": f"sort: {' '.join(map(str, digits))}\n", "answer": " ".join(map(str, sorted(digits)))}


def make_problems(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` problems drawn from both splits; deterministic in ``seed``."""
    rng = random.Random(seed)
    both = _SPLITS["train"] | _SPLITS["eval"]
    return [_problem(_digits(rng, both)) for _ in range(n)]


def make_split(split: str, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` problems from the ``"train"`` or ``"eval"`` split; the two share no multiset of digits."""
    allowed = _SPLITS.get(split)
    if allowed is None:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = random.Random(f"tinysort-{split}-{seed}")
    return [_problem(_digits(rng, allowed)) for _ in range(n)]


def parse_digits(prompt: str) -> list[int]:
    """The digits of a prompt, in prompt order."""
    return [int(x) for x in re.findall(r"[1-9]", prompt)]


def _show(digits: list[int]) -> str:
    return " ".join(map(str, digits))


def write_solution(problem: dict[str, str], style: str, rng: random.Random) -> str:
    """A completion for ``problem`` in ``style`` (one of :data:`STYLES`); no trailing EOS."""
    digits = parse_digits(problem["prompt"])
    ordered = sorted(digits)
    if style == "plain":
        return _show(ordered)
    if style == "verbose":
        return rng.choice(VERBOSE).format(_show(ordered))
    if style == "slip":
        return _show(rng.choice(_slips(ordered)))
    if style == "echo":
        return _show(digits)
    if style == "head":
        return str(ordered[0])
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def make_sft_data(
    n: int, seed: int, mixture: dict[str, float] | None = None, split: str = "train"
) -> list[dict[str, str]]:
    """``n`` supervised examples ``{"prompt", "completion", "answer", "style"}`` with styles drawn from ``mixture``."""
    rng = random.Random(f"tinysort-sft-{seed}")
    return draw_sft_examples(make_split(split, n, seed), mixture or DEFAULT_MIXTURE, rng, write_solution)


def extract_list(text: str) -> str | None:
    """The last list of digits in ``text`` (what the recipes' ``exact_match`` compares), or ``None``."""
    found = [m.group(0) for m in _LIST.finditer(text)]
    return found[-1] if found else None


def classify_style(completion: str, prompt: str) -> str:
    """The style a completion of ``prompt`` looks like; ``"other"`` when none fits.

    Needs the prompt: ``slip``, ``echo`` and ``head`` are defined against its digits.
    """
    digits = parse_digits(prompt)
    ordered = sorted(digits)
    text = completion.strip()
    if _LIST.fullmatch(text):
        got = [int(x) for x in text.split()]
        if got == ordered:
            return "plain"
        if got == digits:
            return "echo"
        if got == ordered[:1]:
            return "head"
        return "slip" if got in _slips(ordered) else "other"
    if any(text == template.format(_show(ordered)) for template in VERBOSE):
        return "verbose"
    return "other"
