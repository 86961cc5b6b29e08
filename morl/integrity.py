"""Cheap checks that a weights file is whole, read from its header alone (no tensor is loaded).

A checkpoint and a model folder share them: a copy cut short or a disk fault shows up as a file whose header
lists more bytes than it holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (``None`` when it is): the header parses and the tensors it lists
    fit in the file.

    Example:
        >>> import tempfile, pathlib
        >>> bad = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"; _ = bad.write_bytes(b"123")
        >>> safetensors_problem(bad)
        'not a readable safetensors file (ValueError: 3 bytes, shorter than the 8-byte header length)'
    """
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
            length = int.from_bytes(prefix, "little")
            if length > size - 8:
                raise ValueError(f"header of {length} bytes in a file of {size}")
            header = json.loads(fh.read(length))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        return f"not a readable safetensors file ({short_reason(err)})"
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"truncated ({size} bytes, its header lists tensors up to byte {needed})"
    return None


def short_reason(err: BaseException) -> str:
    """An exception as a short clause for a message: a missing file says so; otherwise its type and first line."""
    if isinstance(err, FileNotFoundError):
        return "missing"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def follow_umask(path: Path) -> None:
    """Give the files at or below ``path`` the mode a file the user creates would have (0644 under umask 022):
    safetensors and ``mkstemp`` write 0600, which leaves a run's model unreadable to the user's group."""
    umask = os.umask(0)
    os.umask(umask)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        os.chmod(file, 0o666 & ~umask)
