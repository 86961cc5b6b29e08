"""The training state: the one record a checkpoint saves and a resume restores (besides tensors).

Step, data position, counters, the learned state of every stateful part (controller, scalarizer, rewards,
callbacks, ...) keyed by its role and tagged with its class, and the run's identity (the resolved recipe a resumed
run is compared with). Weights, optimizer moments and random-number streams are tensors and live beside it in the
checkpoint (:mod:`morl.checkpoint`).

State loads only into the class that saved it: a Lagrangian controller never receives CTWA's ``u_``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from morl.callbacks import Stateful


class StateMismatch(RuntimeError):
    """Saved state does not fit the part it would load into (another class, or a part that is not there)."""


@dataclass
class TrainingState:
    """Where a run stands; JSON-able."""

    step: int = 0  # policy updates done
    data_position: int = 0  # training prompts drawn so far (the seeded per-epoch order is recomputed from it)
    skipped_steps: int = 0  # steps whose update was skipped for a non-finite loss or gradient
    nonfinite_streak: int = 0  # such steps in a row, up to now
    num_tokens: int = 0  # prompt and completion tokens of every training batch so far (TRL's num_tokens)
    # per objective: steps in a row on which its reward timed out or failed on every sample (the stop rule's count)
    reward_failure_streaks: dict[str, int] = field(default_factory=dict)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> {"class": path, "state": {...}}
    identity: dict[str, Any] = field(default_factory=dict)  # what makes the run this experiment (see morl.run)
    segment: int = 0  # index of the manifest segment that wrote it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def class_path(obj: Any) -> str:
    """``module.QualName`` of an object's class, or of a plain function."""
    target = obj if callable(obj) and not hasattr(obj, "state_dict") and hasattr(obj, "__qualname__") else type(obj)
    return f"{target.__module__}.{target.__qualname__}"


def capture_parts(parts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``role -> {"class", "state"}`` for every part that has state (:class:`Stateful`)."""
    return {
        role: {"class": class_path(part), "state": part.state_dict()}
        for role, part in parts.items()
        if isinstance(part, Stateful)
    }


def restore_parts(parts: dict[str, Any], saved: dict[str, dict[str, Any]]) -> None:
    """Load each saved state into the part of the same role, refusing a part of another class.

    A stateful part with no saved state (or saved state with no part) is an error too: the run would silently
    continue with a fresh controller or forget a reward's running mean.
    """
    problems = []
    for role, part in parts.items():
        if not isinstance(part, Stateful):
            continue
        if role not in saved:
            problems.append(f"{role}: {class_path(part)} has state but the checkpoint has none for it")
        elif saved[role]["class"] != class_path(part):
            problems.append(f"{role}: the checkpoint holds the state of {saved[role]['class']}, not {class_path(part)}")
    for role in saved:
        if role not in parts:
            problems.append(f"{role}: the checkpoint holds state for a part this run does not have")
    if problems:
        raise StateMismatch("the checkpoint does not fit this run:\n  " + "\n  ".join(problems))
    for role, part in parts.items():
        if isinstance(part, Stateful) and saved[role]["state"]:
            part.load_state_dict(saved[role]["state"])
