"""Loading a checkpoint into a live run: its training state, the policy's weights (or adapter), the optimizer's
moments, the parts' tensors and the random-number streams; and, before resuming, setting later checkpoints aside."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from morl.checkpoint.errors import CheckpointError, CorruptCheckpoint
from morl.checkpoint.find import checkpoint_step, list_checkpoints, run_dir_of
from morl.checkpoint.layout import _TMP_PREFIX, STATE_FILE, STATE_TENSORS
from morl.checkpoint.rng import set_rng_state
from morl.checkpoint.write import _quiet_transformers, _shelve
from morl.integrity import pickled_weights, short_reason, unpickling_reason
from morl.policy import ADAPTER_CONFIG, Policy, load_options
from morl.state import TrainingState


@dataclass(frozen=True)
class Loaded:
    """A checkpoint read back: its folder, its training state and the reference pointer it recorded."""

    path: Path
    state: TrainingState
    reference: dict[str, Any] | None


def read_checkpoint(checkpoint: str | Path) -> Loaded:
    """The training state a complete checkpoint holds (no tensors loaded yet)."""
    checkpoint = Path(checkpoint)
    try:
        data = json.loads((checkpoint / STATE_FILE).read_text())
        reference = data.pop("reference", None)
        state = TrainingState.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CorruptCheckpoint(f"{checkpoint / STATE_FILE}: unreadable ({short_reason(err)})") from None
    return Loaded(path=checkpoint, state=state, reference=reference)


def load_tensors(checkpoint: Path, policy: Policy, optimizer: torch.optim.Optimizer) -> None:
    """Copy the saved parameters into the live model and restore the optimizer's moments."""
    load_weights(policy, checkpoint / "model")
    saved = _torch_load(checkpoint / "optimizer.pt")
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{checkpoint / 'optimizer.pt'}: does not fit this run's optimizer ({err})") from None


def load_state_tensors(checkpoint: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The parts' tensor state (empty when the checkpoint has none), on ``device``."""
    path = checkpoint / STATE_TENSORS
    if not path.exists():
        return {}
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error types on a damaged file
        raise CorruptCheckpoint(f"{path}: unreadable ({short_reason(err)})") from None


def load_rng(checkpoint: Path) -> None:
    """Restore the random-number streams; call it last, so nothing done while loading draws from them."""
    saved = _torch_load(checkpoint / "rng.pt")
    try:
        set_rng_state(saved)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise CorruptCheckpoint(f"{checkpoint / 'rng.pt'}: not random-number states ({short_reason(err)})") from None


def _torch_load(path: Path) -> Any:
    """``torch.load`` of a checkpoint file, a damaged one reported as :class:`CorruptCheckpoint` naming it."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # RuntimeError, EOFError, UnpicklingError, OSError, ... depending on the damage
        raise CorruptCheckpoint(f"{path}: unreadable ({short_reason(err)})") from None


def load_weights(policy: Policy, model_dir: Path) -> None:
    """Copy saved parameters into the live model (same tensors, so the optimizer keeps pointing at them); a saved
    adapter directory into the live adapters."""
    from transformers import AutoModelForCausalLM

    if (model_dir / ADAPTER_CONFIG).is_file() or policy.has_adapters:
        _load_adapter(policy, model_dir)
        return

    dtype = next(policy.model.parameters()).dtype
    try:
        with _quiet_transformers():
            saved = AutoModelForCausalLM.from_pretrained(
                model_dir,
                dtype=dtype,
                trust_remote_code=policy.config.trust_remote_code,
                **load_options(policy.config.use_kernels),
            )
    except (OSError, ValueError, RuntimeError, EOFError) as err:  # missing or damaged files
        raise CorruptCheckpoint(f"{model_dir}: cannot load the saved policy ({short_reason(err)})") from None
    except pickle.UnpicklingError as err:  # a pickled weights file: damaged, or one the safe loader refuses
        raise CorruptCheckpoint(f"{pickled_weights(model_dir)}: {unpickling_reason(err)}") from None
    except Exception as err:  # safetensors' own error type, whose module is private
        if type(err).__name__ != "SafetensorError":
            raise
        raise CorruptCheckpoint(f"{model_dir}: cannot load the saved policy ({short_reason(err)})") from None
    try:
        with torch.no_grad():
            policy.model.load_state_dict(saved.state_dict(), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{model_dir}: the saved policy does not fit this run's model ({err})") from None


def _load_adapter(policy: Policy, model_dir: Path) -> None:
    """Copy a saved peft adapter into the policy's adapters: every adapter tensor must be there, and nothing else."""
    if not (model_dir / ADAPTER_CONFIG).is_file():
        raise CheckpointError(
            f"{model_dir}: the saved policy is a whole model, but this run's policy trains LoRA adapters "
            "(policy.lora); resume with the recipe the run was started with"
        )
    if not policy.has_adapters:
        raise CheckpointError(
            f"{model_dir}: the saved policy is a LoRA adapter, but this run's policy has no adapters; set policy.lora "
            "as the run did"
        )
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    try:
        saved = load_peft_weights(str(model_dir), device=str(policy.device))
    except Exception as err:  # OSError, ValueError, safetensors' own error: missing or damaged files
        raise CorruptCheckpoint(f"{model_dir}: cannot load the saved adapter ({short_reason(err)})") from None
    expected = set(get_peft_model_state_dict(policy.model))
    if set(saved) != expected:
        missing, extra = sorted(expected - set(saved))[:3], sorted(set(saved) - expected)[:3]
        raise CheckpointError(
            f"{model_dir}: the saved adapter does not fit this run's adapters (missing {missing}, unexpected "
            f"{extra}); use the run's policy.lora settings"
        )
    try:
        with torch.no_grad():
            result = set_peft_model_state_dict(policy.model, saved)
    except RuntimeError as err:  # shapes: another rank r
        raise CheckpointError(f"{model_dir}: the saved adapter does not fit this run's adapters ({err})") from None
    if result.unexpected_keys:
        raise CheckpointError(f"{model_dir}: adapter tensors with no place in the model: {result.unexpected_keys[:3]}")


def prepare_resume(checkpoint: Path) -> None:
    """Before continuing from ``checkpoint``: remove leftover temporary folders, and move checkpoints later than
    it (an abandoned timeline, when resuming from an older one) to ``checkpoints/abandoned/`` — kept, not deleted,
    and never picked by a later resume."""
    run_dir = run_dir_of(checkpoint)
    complete, torn = list_checkpoints(run_dir)
    for t in torn:
        if t.name.startswith(_TMP_PREFIX):
            shutil.rmtree(t, ignore_errors=True)
    later = [c for c in complete if checkpoint_step(c) > checkpoint_step(checkpoint)]
    if later:
        from morl.logging import console

        shelf = _shelve(run_dir, later)
        names = ", ".join(c.name for c in later)
        console.print(f"[yellow]resuming from an older checkpoint[/]: {names} moved to {shelf}", soft_wrap=True)
