"""One JSON-plain form for everything a run directory records, so that what is compared equals what is stored."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from pydantic_core import to_jsonable_python


def to_plain(value: Any) -> Any:
    """JSON-plain copy of ``value``: models, paths, tuples and array scalars become JSON types; NaN/inf become None.

    A recipe read back from ``manifest.json`` and the same recipe in memory then compare equal.
    """
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars, torch tensors
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    converted = to_jsonable_python(value)
    return converted if converted is value else to_plain(converted)


def now_iso() -> str:
    """Local time with its UTC offset, to the second: readable and unambiguous."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
