"""One timing line per phase of a step.

Example:
    >>> timings: dict[str, float] = {}
    >>> with phase(timings, "rollout"):
    ...     pass
    >>> list(timings)
    ['timing/rollout']
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from morl import metrics as M


@contextmanager
def phase(timings: dict[str, float], name: str, when: bool = True) -> Iterator[None]:
    """Add the seconds spent in the block to ``timings["timing/<name>"]`` (a phase run twice in a step adds up);
    ``when=False`` runs the block untimed, for a phase that only some steps have."""
    if not when:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        key = M.timing(name)
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start
