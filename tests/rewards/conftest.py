"""Shared fixtures for the reward tests: real MATH-500 rows from ``../shared`` beside the repository root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MATH500 = REPO_ROOT.parent / "shared" / "data" / "math500"


@pytest.fixture(scope="session")
def math500_rows() -> list[dict[str, Any]]:
    """The 300 training rows of the paper's MATH-500 split (verl layout); skipped when shared/ is absent."""
    path = MATH500 / "train.parquet"
    if not path.is_file():
        pytest.skip(f"MATH-500 data not found at {path}")
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
