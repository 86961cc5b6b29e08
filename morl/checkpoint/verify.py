"""Checking a checkpoint before loading it: every file whole and, where the ``complete`` marker records them, the
same bytes as were written (sha256)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from morl.checkpoint.errors import CorruptCheckpoint
from morl.checkpoint.layout import DIGESTS, MARKER, STATE_FILE, STATE_TENSORS
from morl.integrity import safetensors_problem, short_reason, zip_problem
from morl.policy import ADAPTER_CONFIG


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(2**22):
            digest.update(chunk)
    return digest.hexdigest()


_checked: dict[tuple[str, int, int, int, int, int], str] = {}


def _checked_sha256(path: Path) -> str:
    """:func:`_sha256`, remembered while the file is unchanged (same inode, size, mtime and ctime): the checks of
    one resume, which look at the same checkpoint more than once, read each file once."""
    info = path.stat()
    key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key not in _checked:
        _checked[key] = _sha256(path)
    return _checked[key]


def verify_checkpoint(checkpoint: str | Path) -> None:
    """``CorruptCheckpoint`` naming the first missing, unreadable or changed file of a complete checkpoint.

    First the cheap checks: the small files read whole (training state, random-number states, configs), only the
    headers of the large ones (safetensors' JSON header against the file size, the zip directory at the end of
    ``optimizer.pt``), which a truncated copy fails. Then, when the ``complete`` marker records the sha256 of each
    file the checkpoint wrote, every file is read and compared (about 1 s a GB): flipped bytes inside a tensor, or
    a file copied in from another run or step, fail here. :func:`resume_intact` falls back when loading itself fails
    (damage in a checkpoint written before digests were recorded).
    """
    checkpoint = Path(checkpoint)
    signature = _signature(checkpoint)
    if _VERIFIED.get(checkpoint.resolve()) == signature:
        return  # the same files passed already in this process (a CLI resume finds the checkpoint, then loads it)
    _json_object(checkpoint / STATE_FILE)
    _verify_model_dir(checkpoint / "model")
    _verify_zip(checkpoint / "optimizer.pt")
    if (checkpoint / STATE_TENSORS).exists():
        verify_safetensors(checkpoint / STATE_TENSORS)
    rng = checkpoint / "rng.pt"
    try:
        torch.load(rng, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on a damaged file
        raise CorruptCheckpoint(f"{rng}: unreadable ({short_reason(err)})") from None
    _verify_digests(checkpoint)
    if signature:
        _VERIFIED[checkpoint.resolve()] = signature


#: checkpoints that passed :func:`verify_checkpoint` in this process, with the signature of their files then
_VERIFIED: dict[Path, tuple] = {}


def _signature(checkpoint: Path) -> tuple:
    """Every file's name, size, modification time and inode: any write or replacement after a check changes it."""
    entries = []
    for path in sorted(checkpoint.rglob("*")):
        try:
            stat = path.stat()
        except OSError:
            return ()  # a file vanished while listing: never taken for verified
        entries.append((str(path.relative_to(checkpoint)), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(entries)


def _verify_digests(checkpoint: Path) -> None:
    """Every file the marker lists holds the bytes that were written (checkpoints written before morl recorded
    digests list none)."""
    marker = checkpoint / MARKER
    digests = _json_object(marker).get(DIGESTS, {})
    if not isinstance(digests, dict):
        raise CorruptCheckpoint(f"{marker}: {DIGESTS!r} is not a mapping of files to digests")
    for name, digest in sorted(digests.items()):
        path = checkpoint / name
        try:
            actual = _checked_sha256(path)
        except OSError as err:
            raise CorruptCheckpoint(f"{path}: {short_reason(err)} (the checkpoint wrote it)") from None
        if actual != digest:
            raise CorruptCheckpoint(
                f"{path}: not the file this checkpoint wrote (its sha256 differs from the one {MARKER!r} records): "
                "damaged, or copied in from another run or step"
            )


def _json_object(path: Path) -> dict:
    """The JSON object ``path`` holds, or ``CorruptCheckpoint`` saying why not."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorruptCheckpoint(f"{path}: unreadable ({short_reason(err)})") from None
    if not isinstance(data, dict):
        raise CorruptCheckpoint(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _verify_model_dir(model_dir: Path) -> None:
    """The saved policy: a whole model (``config.json`` and weights) or an adapter, every weight file whole."""
    if not model_dir.is_dir():
        raise CorruptCheckpoint(f"{model_dir}: missing (the saved policy)")
    adapter = (model_dir / ADAPTER_CONFIG).is_file()
    config = model_dir / (ADAPTER_CONFIG if adapter else "config.json")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorruptCheckpoint(f"{config}: unreadable ({short_reason(err)})") from None
    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    if not weights:
        raise CorruptCheckpoint(f"{model_dir}: no weights (no *.safetensors or *.bin file)")
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise CorruptCheckpoint(f"{index}: unreadable ({short_reason(err)})") from None
        for shard in sorted(shards - {w.name for w in weights}):
            raise CorruptCheckpoint(f"{model_dir / shard}: missing (listed in {index.name})")
    for file in weights:
        if file.suffix == ".safetensors":
            verify_safetensors(file)
        else:
            _verify_zip(file)


def verify_safetensors(path: Path) -> None:
    """The header parses and the tensors it lists fit in the file (a truncated file does not hold them)."""
    problem = safetensors_problem(path)
    if problem is not None:
        raise CorruptCheckpoint(f"{path}: {problem}")


def _verify_zip(path: Path) -> None:
    """A ``torch.save`` file is a zip archive whose directory sits at its end: a truncated one has none."""
    problem = zip_problem(path)
    if problem is not None:
        raise CorruptCheckpoint(f"{path}: {problem}")
