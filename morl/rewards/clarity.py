r"""Clarity: a boxed answer and visible step-by-step structure? (0/1)

The paper's third reward ("Uncovering Cross-Objective Interference in Multi-Objective Alignment", 2026; rule
from its verl reference code): ``r_cla = 1`` iff the completion has a non-empty ``\boxed{...}`` *and* at least
two enumerators (``1.``, ``2)``, ``(a)``, ``Step 2:``, bullets ``-``/``*``/``•``) or at least two ordinal words
(first ... tenth, firstly, next, then, finally). The rule checks form, not content: numbered but empty steps
pass, which is exactly the cheap mode that makes the objectives interfere.

Unlike the reference regex, which counts ``x-`` or ``3.`` anywhere after a space, enumerators count only at
the start of a line (after indentation, ``>`` quotes, ``#`` headings or ``**`` bold). All patterns are
bounded, so matching is linear in the text length.
"""

from __future__ import annotations

import re
from typing import Any

from morl.rewards.base import RewardConfig, RewardFn
from morl.rewards.boxed import boxed_answers

_ENUMERATOR = re.compile(
    r"""
    ^[ \t>\#*_]{0,8}                                        # indentation, quote, heading or bold markup
    (?:
        step[ \t]{0,3}\d{1,3}(?!\d)                         # Step 2   Step 2:   step 10.
      | \(?(?:\d{1,3}|[a-z]|[ivx]{1,4})[.)](?=[ \t*]|$)     # 1.  2)  (3)  a)  (b)  iv.   (not 1.5)
      | [-*+\u2022](?=[ \t])                                # - item   * item   • item
    )
    """,
    re.IGNORECASE | re.MULTILINE | re.VERBOSE,
)
_ORDINAL = re.compile(
    r"\b(?:(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth)(?:ly)?|next|then|finally)\b",
    re.IGNORECASE,
)


def has_steps(text: str, minimum: int = 2) -> bool:
    """At least ``minimum`` line-start enumerators, or at least ``minimum`` ordinal words."""
    return _at_least(_ENUMERATOR, text, minimum) or _at_least(_ORDINAL, text, minimum)


def _at_least(pattern: re.Pattern[str], text: str, minimum: int) -> bool:
    for count, _ in enumerate(pattern.finditer(text), start=1):
        if count >= minimum:
            return True
    return minimum <= 0


class Clarity(RewardFn):
    r"""1.0 if the completion has a non-empty ``\boxed{...}`` and at least two steps, else 0.0.

    Rewards a readable, structured solution with a clearly marked final answer, whatever its correctness.
    Steps are line-start enumerators (``1.``, ``2)``, ``a)``, ``Step 2:``, ``-``/``*`` bullets) or ordinal
    words (first, second, ..., next, then, finally); two of either kind suffice. Stateless.

    Example:
        >>> cla = Clarity()
        >>> cla(["p"] * 4, ["1. Add: 3+5=8\n2. Subtract: 8-2=6\n\\boxed{6}", "1.\n2.\n\\boxed{7}",
        ...                 "First add, then subtract: \\boxed{6}", "1. Add\n2. Subtract\n\\boxed{}"])
        [1.0, 1.0, 1.0, 0.0]
    """

    name = "clarity"

    class Config(RewardConfig):
        pass

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        return [1.0 if _is_clear(c) else 0.0 for c in completions]


def _is_clear(completion: str) -> bool:
    return any(box.strip() for box in boxed_answers(completion)) and has_steps(completion)
