"""Brevity: how far below ``max_chars`` characters is the completion? (continuous, 0 to ``scale``)

A fixed length penalty, unlike :class:`~morl.rewards.conciseness.Conciseness`, whose standard moves with
training: ``scale * max(0, 1 - chars / max_chars)``. Its default scale is 10, not 1, on purpose: beside a 0/1
reward (``exact_match``) its spread dwarfs the other's, so under raw equal weights brevity decides the score —
TinySort's cheap mode (one digit, short and wrong) wins that way. Methods that normalise each objective before
weighting it (advantage-level controllers) are immune to the scale; reward-level weights are not.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from morl.rewards.base import RewardConfig, RewardFn


class Brevity(RewardFn):
    """``scale * max(0, 1 - chars / max_chars)``: ``scale`` for an empty completion, 0 from ``max_chars`` on.

    Rewards short completions on a fixed ruler (characters of the text, whatever the tokenizer), so values at
    different steps compare. Stateless.

    Example:
        >>> scores = Brevity()(["p"] * 4, ["", "1", "1 3 7 9", "Sorted, that is 1 3 7 9. Done."])
        >>> [round(s, 2) for s in scores]
        [10.0, 9.58, 7.08, 0.0]
        >>> Brevity(max_chars=10, scale=1.0)(["p"], ["12345"])
        [0.5]
    """

    name = "brevity"

    class Config(RewardConfig):
        max_chars: int = Field(24, ge=1, description="completions this long or longer score 0")
        scale: float = Field(
            10.0, gt=0, description="score of an empty completion; 10 makes brevity outweigh a 0/1 reward"
        )

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        limit, scale = self.config.max_chars, self.config.scale
        return [scale * max(0.0, 1.0 - len(c) / limit) for c in completions]
