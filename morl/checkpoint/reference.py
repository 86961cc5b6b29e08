"""The reference policy (the KL anchor) a checkpoint points to rather than copies: where it came from and a
fingerprint of its weights, and the check on resume that the run is built on the same one."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from morl.checkpoint.errors import CheckpointError
from morl.checkpoint.layout import _TMP_PREFIX, MARKER
from morl.checkpoint.load import load_weights
from morl.checkpoint.write import _fsync_tree, _temporary_dir, write_failed
from morl.integrity import os_error_of
from morl.policy import AdapterReference, Policy, base_weights, is_peft_model, resolve_model_path


def reference_pointer(reference: Policy, fingerprint: str, run_dir: Path) -> dict[str, Any]:
    """Where the reference came from and a fingerprint of its weights; a copy in the run only if it cannot be
    reloaded from its source (a model built in Python, say). A LoRA policy's reference is its own frozen base, which
    a resumed run must be built on anyway (the checkpoints hold only the adapter): never a copy."""
    source = reference.config.model
    pointer: dict[str, Any] = {"model": source, "fingerprint": fingerprint}
    if isinstance(reference, AdapterReference):
        pointer["adapters_disabled"] = True
    elif not _reloadable(source):
        copy_dir = run_dir / "reference-model"
        if not (copy_dir / MARKER).exists():
            tmp = _temporary_dir(f"{_TMP_PREFIX}reference-", run_dir)
            try:
                reference.save(tmp)
                _fsync_tree(tmp)
                (tmp / MARKER).write_text("reference\n")
            except Exception as err:
                shutil.rmtree(tmp, ignore_errors=True)
                failure = os_error_of(err)
                if failure is None:
                    raise
                needed = sum(p.numel() * p.element_size() for p in reference.model.parameters())
                raise write_failed("the reference policy's copy", run_dir, run_dir, failure, needed) from None
            if copy_dir.exists():  # a copy torn while writing (no marker): ours to replace
                shutil.rmtree(copy_dir)
            os.rename(tmp, copy_dir)
        pointer["copy"] = copy_dir.name
    return pointer


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, dtypes, bytes): equal iff the weights are equal.

    A peft model (a LoRA policy, whose reference is its base with adapters disabled) is hashed by its base weights
    under the base model's names, adapters left out: the fingerprint of the plain base model it was built on."""
    digest = hashlib.blake2b(digest_size=16)
    weights = base_weights(model, merged=False) if is_peft_model(model) else model.state_dict().items()
    for name, tensor in weights:
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _reloadable(source: str) -> bool:
    if Path(resolve_model_path(source)).is_dir():
        return True
    return re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None and not Path(source).exists()  # a hub name


def check_reference(reference: Policy, fingerprint: str, pointer: dict[str, Any] | None, run_dir: Path) -> None:
    """The KL anchor must be the run's initial policy: the same weights, or the copy the run saved of them (a LoRA
    run's anchor is the base its adapters sit on, which has no copy: build the pipeline on the same base)."""
    if pointer is None or fingerprint == pointer["fingerprint"]:
        return
    copy_dir = run_dir / pointer["copy"] if pointer.get("copy") else None
    if copy_dir is not None and (copy_dir / MARKER).is_file() and not isinstance(reference, AdapterReference):
        load_weights(reference, copy_dir)
        return
    if isinstance(reference, AdapterReference) or pointer.get("adapters_disabled"):
        raise CheckpointError(
            f"the base model under this run's LoRA adapters (its KL anchor) differs from the run's, which was "
            f"{pointer['model']!r}; build the pipeline on that same base model (and policy.lora) to resume"
        )
    raise CheckpointError(
        f"the reference policy (KL anchor) differs from the run's, which was the initial policy from "
        f"{pointer['model']!r}; build the pipeline from that same initial model to resume"
    )
