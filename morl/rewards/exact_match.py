"""Exact match: is the completion's answer the ground-truth string, character for character? (0/1)

For tasks whose answer has one spelling (a sorted list, a label, a short code), where a math-equivalence check
(:class:`~morl.rewards.accuracy.Accuracy`) would be slow and too lenient. Both sides are stripped of surrounding
whitespace; nothing else is normalised.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from morl.rewards.base import RESERVED_ARGUMENTS, RewardConfig, RewardFn


class ExactMatch(RewardFn):
    """1.0 if the completion (or the last match of ``pattern`` in it), stripped, equals the ground truth, else 0.0.

    Rewards the one right answer and nothing near it. ``pattern`` picks the answer out of surrounding words
    (``"Sorted, that is 1 3 7 9. Done."`` with ``[1-9](?: [1-9])*`` compares ``1 3 7 9``); a completion where it
    does not match scores 0. A row whose ground truth is ``None`` scores ``None`` (not applicable). Stateless.

    Example:
        >>> em = ExactMatch()
        >>> em(["p"] * 3, [" 1 3 7\\n", "1 3 7.", "Sorted: 1 3 7."], answer=["1 3 7"] * 3)
        [1.0, 0.0, 0.0]
        >>> ExactMatch(pattern=r"[1-9](?: [1-9])*")(["p"] * 2, ["Sorted: 1 3 7.", "1"], answer=["1 3 7"] * 2)
        [1.0, 0.0]
    """

    name = "exact_match"

    class Config(RewardConfig):
        answer_column: str = Field("answer", description="dataset column with the ground-truth string")
        pattern: str | None = Field(
            None,
            description="regex whose last match in the completion is the answer (e.g. the list inside a sentence); "
            "None: the whole completion",
        )

        @field_validator("pattern")
        @classmethod
        def _compiles(cls, value: str | None) -> str | None:
            if value is not None:
                try:
                    re.compile(value)
                except re.error as err:
                    raise ValueError(f"not a regular expression: {err}") from None
            return value

    def required_columns(self) -> list[str]:
        return [self.config.answer_column]

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        column = self.config.answer_column
        if column not in columns:
            present = sorted(k for k in columns if k not in RESERVED_ARGUMENTS)
            raise KeyError(f"exact_match: ground-truth column {column!r} not given; columns present: {present}")
        golds = list(columns[column])
        if len(golds) != len(completions):
            raise ValueError(f"exact_match: {len(golds)} values in {column!r} for {len(completions)} completions")
        pattern = re.compile(self.config.pattern) if self.config.pattern is not None else None
        scores: list[float | None] = []
        for completion, gold in zip(completions, golds, strict=True):
            if gold is None:
                scores.append(None)
                continue
            answer: str | None = completion
            if pattern is not None:
                found = [m.group(0) for m in pattern.finditer(completion)]
                answer = found[-1] if found else None
            scores.append(1.0 if answer is not None and answer.strip() == str(gold).strip() else 0.0)
        return scores
