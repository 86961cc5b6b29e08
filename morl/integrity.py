"""Cheap checks that a weights file is whole, read from its header alone (no tensor is loaded), and what a failed
write or load of one says, in words.

A checkpoint and a model folder share them: a copy cut short or a disk fault shows up as a file whose header
lists more bytes than it holds; a full disk under a writer that hides the ``OSError`` (torch, safetensors) is found
behind the error it raised instead.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zipfile
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


def zip_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole ``torch.save`` file (``None`` when it is): such a file is a zip archive whose
    directory sits at its end, which a truncated copy has lost.

    Example:
        >>> import tempfile, pathlib
        >>> bad = pathlib.Path(tempfile.mkdtemp()) / "pytorch_model.bin"; _ = bad.write_bytes(b"PK")
        >>> zip_problem(bad)
        'unreadable (BadZipFile: File is not a zip file)'
    """
    try:
        with zipfile.ZipFile(path) as archive:
            size = path.stat().st_size
            if any(info.header_offset + info.compress_size > size for info in archive.infolist()):
                raise zipfile.BadZipFile("an entry runs past the end of the file")
    except FileNotFoundError:
        return "missing"
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        return f"unreadable ({short_reason(err)})"
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


def os_error_of(err: BaseException) -> OSError | None:
    """The operating-system error behind a failed write or read, if there is one: ``err`` itself, one it was raised
    from or while handling (torch's zip writer raises ``RuntimeError`` over the ``OSError`` of a full disk), or the
    ``os error N`` that safetensors puts in its message. ``None`` for a failure of another kind.

    Example:
        >>> os_error_of(RuntimeError("I/O error: No space left on device (os error 28)")).strerror
        'No space left on device'
        >>> os_error_of(ValueError("not a number")) is None
        True
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        found = re.search(r"\(os error (\d+)\)", str(current))
        if found:
            number = int(found.group(1))
            return OSError(number, os.strerror(number))
        current = current.__cause__ or current.__context__
    return None


def is_disk_full(err: OSError) -> bool:
    """The file system (or the user's quota on it) has no room left."""
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int | None:
    """Bytes the user may still write on the file system holding ``path`` (its nearest existing folder); ``None``
    when it cannot be asked."""
    path = Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def size_text(size: int) -> str:
    """A byte count for a message: ``'512 bytes'``, ``'20.0 kB'``, ``'1.5 GB'``.

    Example:
        >>> size_text(1_500_000_000)
        '1.5 GB'
    """
    if size < 1000:
        return f"{size} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        size /= 1000
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")


def unpickling_reason(err: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in one clause: a pickle that calls a function the
    safe loader blocks (a weights file never needs one; a file that does was made to run code), or damaged bytes.

    Example:
        >>> unpickling_reason(Exception("Weights only load failed.\\n\\nUnsupported operand 255\\n"))
        'unreadable, damaged (Exception: Unsupported operand 255)'
        >>> blocked = "Weights only load failed.\\nTrying to load unsupported GLOBAL posix.system whose module..."
        >>> unpickling_reason(Exception(blocked)).split(", which")[0]
        'refused by the safe loader (torch.load with weights_only): its pickle calls posix.system'
    """
    text = str(err)
    called = re.search(r"GLOBAL ([\w.]+)", text)
    if called:
        return (
            f"refused by the safe loader (torch.load with weights_only): its pickle calls {called.group(1)}, which no "
            "weights file needs; it may have been made to run code, so it is not loaded"
        )
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
    detail = lines[0] if lines else short_reason(err)
    return f"unreadable, damaged ({type(err).__name__}: {detail})"


def pickled_weights(folder: Path) -> Path:
    """The pickled weights file of a model folder (``pytorch_model.bin``), to name in a message; the folder itself
    when it holds none or several (shards)."""
    found = sorted(Path(folder).glob("*.bin")) if Path(folder).is_dir() else []
    return found[0] if len(found) == 1 else Path(folder)
