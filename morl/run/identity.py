"""Is a resume the same experiment? Compare the recipe a run started with against the one resuming it.

Resuming with a different controller, learning rate or reward silently produces a trajectory that is neither
run. ``check_resume`` lists every setting that differs and changes what is trained, and refuses unless each
is accepted by name. Settings that only say how long, where or how visibly to train (``TRAJECTORY_NEUTRAL``)
may change freely: extending ``train.steps`` is the usual reason to resume.

Example:
    >>> old = {"controller": {"name": "ctwa", "lr": 0.05}, "train": {"steps": 100}}
    >>> new = {"controller": {"name": "ctwa", "lr": 0.1}, "train": {"steps": 200}}
    >>> [str(d) for d in recipe_differences(old, new)]
    ['controller.lr: 0.05 -> 0.1', 'train.steps: 100 -> 200']
    >>> [str(d) for d in check_resume(old, new, accept=["controller"])]
    ['controller.lr: 0.05 -> 0.1']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from morl.run._plain import to_plain


class _Absent:
    """The value on the side of a comparison where a key does not exist."""

    def __repr__(self) -> str:
        return "<absent>"

    def __reduce__(self) -> str:
        return "ABSENT"  # copies and pickles stay the one sentinel


ABSENT: Any = _Absent()

#: Recipe paths that do not change what is trained: length, naming, output, logging, checkpointing, threads,
#: where CTWA's after-update pass runs.
TRAJECTORY_NEUTRAL: frozenset[str] = frozenset(
    {
        "name",
        "train.steps",
        "train.output_dir",
        "train.progress",
        "train.loggers",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.save_model",
        "train.max_nonfinite_steps",
        "train.threads",
        "train.overlap_after_update",
        "train.log_completions",
        "train.num_completions_to_print",
        "train.log_completions_every",
        "train.push_to_hub",
        "train.hub_model_id",
        "train.hub_private_repo",
        "train.stop_grace_s",
        "train.max_failed_reward_steps",
    }
)

_SHOWN = 100  # characters of a value shown in a difference


@dataclass(frozen=True)
class Difference:
    """One setting that differs: its dotted ``path`` and the ``old`` and ``new`` values (``ABSENT`` if missing)."""

    path: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.path or '(recipe)'}: {_show(self.old)} -> {_show(self.new)}"

    @property
    def neutral(self) -> bool:
        """Whether the setting leaves the trajectory unchanged (see ``TRAJECTORY_NEUTRAL``)."""
        return any(covers(name, self.path) for name in TRAJECTORY_NEUTRAL)


class ResumeMismatch(RuntimeError):
    """The resuming recipe differs from the run's in settings that change what is trained."""

    def __init__(self, message: str, differences: Sequence[Difference] = (), unknown: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.differences = list(differences)
        self.unknown = list(unknown)


def covers(name: str, path: str) -> bool:
    """Whether the dotted ``name`` is ``path`` or one of its parents (``controller`` covers ``controller.lr``)."""
    return path == name or path.startswith(name + ".")


def recipe_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Difference]:
    """Every setting that differs between two recipes, by dotted path (list items by index: ``rewards.1``)."""
    found: list[Difference] = []
    _compare(to_plain(old), to_plain(new), "", found)
    return found


def check_resume(old: Mapping[str, Any], new: Mapping[str, Any], accept: Sequence[str] = ()) -> list[Difference]:
    """The accepted differences between the run's recipe ``old`` and the resuming recipe ``new``.

    Raises ``ResumeMismatch`` listing every difference outside ``TRAJECTORY_NEUTRAL`` that no name in
    ``accept`` covers, and every name in ``accept`` that covers no difference (most likely a typo).
    """
    if isinstance(accept, str):
        accept = [accept]
    differences = recipe_differences(old, new)
    relevant = [d for d in differences if not d.neutral]
    names = [name.strip() for name in accept]
    unknown = [name for name in names if not any(covers(name, d.path) for d in differences)]
    refused = [d for d in relevant if not any(covers(name, d.path) for name in names)]
    if refused or unknown:
        raise ResumeMismatch(_mismatch_message(refused, unknown, differences), refused, unknown)
    return [d for d in relevant if any(covers(name, d.path) for name in names)]


def _compare(old: Any, new: Any, path: str, found: list[Difference]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            _compare(old.get(key, ABSENT), new.get(key, ABSENT), _join(path, key), found)
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            _compare(old[i] if i < len(old) else ABSENT, new[i] if i < len(new) else ABSENT, _join(path, i), found)
    elif old is ABSENT and isinstance(new, dict) and new:
        _compare({}, new, path, found)  # a new section: name each setting in it, so neutral ones stay neutral
    elif new is ABSENT and isinstance(old, dict) and old:
        _compare(old, {}, path, found)
    elif old != new or isinstance(old, bool) != isinstance(new, bool):  # True == 1, yet a different setting
        found.append(Difference(path, old, new))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _mismatch_message(refused: list[Difference], unknown: list[str], differences: list[Difference]) -> str:
    lines = []
    if refused:
        n = len(refused)
        lines.append(
            f"cannot resume: the recipe differs from the run's in {n} setting{'s' if n > 1 else ''} "
            f"that {'change' if n > 1 else 'changes'} what is trained:"
        )
        lines += [f"  {d}" for d in refused]
    if unknown:
        lines.append(f"accepted change{'s' if len(unknown) > 1 else ''} matching no difference (a typo?):")
        lines += [f"  {name}" for name in unknown]
        if differences:
            lines.append("the differences are:")
            lines += [f"  {d}" for d in differences]
        else:
            lines.append("the recipes do not differ.")
    if refused:
        example = refused[0].path
        lines.append(
            f"To continue anyway, accept each change: --accept-change {example} (repeatable; a parent such as "
            f"'{example.split('.')[0]}' covers everything under it), or accept_changes=[{example!r}, ...] in Python. "
            "To train this recipe from scratch instead, start a new run in another output directory."
        )
    else:
        lines.append("Pass only names of settings that differ to --accept-change / accept_changes.")
    return "\n".join(lines)
