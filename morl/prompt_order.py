"""Which training prompts a step gets: a seeded shuffle per epoch, resumable from one number.

The position (prompts drawn so far) lives in :class:`morl.state.TrainingState`, so a checkpoint carries it; the order
is recomputed from the seed and the epoch, never saved.

Example:
    >>> order = PromptOrder(seed=0)
    >>> first, position = order.draw(["a", "b", "c"], position=0, count=2)
    >>> again, _ = PromptOrder(seed=0).draw(["a", "b", "c"], position=0, count=2)
    >>> first == again, position
    (True, 2)
"""

from __future__ import annotations

import random
from typing import Any


class PromptOrder:
    """A per-epoch permutation of the data, drawn from ``seed * 100_003 + epoch``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._epoch: int | None = None
        self._order: list[int] = []

    def draw(self, data: list[dict[str, Any]] | list[Any], position: int, count: int) -> tuple[list[Any], int]:
        """``count`` rows from ``position`` on, and the position after them."""
        picked = []
        for _ in range(count):
            epoch, offset = divmod(position, len(data))
            if epoch != self._epoch or len(self._order) != len(data):
                self._order = random.Random(self.seed * 100_003 + epoch).sample(range(len(data)), len(data))
                self._epoch = epoch
            picked.append(data[self._order[offset]])
            position += 1
        return picked, position
