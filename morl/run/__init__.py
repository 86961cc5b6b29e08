"""A run owns its directory: claim and lock it, append to its logs, record what it is, resume only the same run.

See ``directory`` (claim, lock), ``jsonl`` (append-only logs and their readers), ``manifest`` (``manifest.json``)
and ``identity`` (what a resume may change).
"""

from morl.run.directory import (
    RUN_MARKERS,
    RunLock,
    RunLockedError,
    check_new_run,
    fresh_run_dir,
    holds_run,
)
from morl.run.identity import (
    ABSENT,
    TRAJECTORY_NEUTRAL,
    Difference,
    ResumeMismatch,
    check_resume,
    covers,
    recipe_differences,
)
from morl.run.jsonl import JsonlWriter, effective_rows, read_events, read_jsonl, read_metrics
from morl.run.manifest import (
    MANIFEST_FILE,
    RUN_OUTPUTS,
    Manifest,
    Method,
    Objective,
    RunDirError,
    RunExistsError,
    Segment,
    library_versions,
    read_regular_file,
)

__all__ = [
    "ABSENT",
    "MANIFEST_FILE",
    "RUN_MARKERS",
    "RUN_OUTPUTS",
    "TRAJECTORY_NEUTRAL",
    "Difference",
    "JsonlWriter",
    "Manifest",
    "Method",
    "Objective",
    "ResumeMismatch",
    "RunDirError",
    "RunExistsError",
    "RunLock",
    "RunLockedError",
    "Segment",
    "check_new_run",
    "check_resume",
    "covers",
    "effective_rows",
    "fresh_run_dir",
    "holds_run",
    "library_versions",
    "read_events",
    "read_jsonl",
    "read_metrics",
    "read_regular_file",
    "recipe_differences",
]
