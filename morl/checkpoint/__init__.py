"""Checkpoints: everything a run needs to continue exactly where it stopped.

A run that dies at step 900 resumes at step 900 with nothing lost: the same parameters, optimizer moments,
training state (:class:`morl.state.TrainingState`: data position, counters, every part's learned state, the run's
identity) and random-number streams, so the resumed run's metrics and final parameters are bit-identical to an
uninterrupted run's on the same CPU and thread count. The checkpointer knows nothing of the pipeline: it writes
and reads the parts it is handed.

Layout of ``RUN_DIR/checkpoints/step-000123/``::

    model/                  the policy in Hugging Face format (``morl eval --checkpoint`` and ``AutoModel`` read it);
                            a LoRA policy's adapter (``adapter_model.safetensors``, ``adapter_config.json``), which
                            ``Policy.from_pretrained`` loads onto the base it names
    training_state.json     the TrainingState, and the reference policy's source (a pointer, not a copy: the
                            reference is the initial policy, or a LoRA policy's base) with a fingerprint of its weights
    optimizer.pt            the optimizer's ``state_dict()``
    rng.pt                  python ``random``, numpy, torch CPU (and CUDA) generator states
    state_tensors.safetensors  tensors of parts' state too large for JSON (the interference forecast's parameter
                            snapshot), only when some part has them
    complete                written last: the step and the sha256 of every other file; a directory without it is
                            torn and is skipped on resume

A checkpoint is written into a temporary directory beside the others, flushed to disk, marked ``complete``
and then renamed into place, so a run killed while writing leaves either the previous checkpoints or a
``.tmp-*`` directory that resuming reports and removes. A write that fails (a full disk, a folder made read-only)
raises :class:`CheckpointWriteError`, which says what failed, where and how to go on; the torn checkpoint is moved
to ``checkpoints/abandoned/`` and the previous complete one stays the one a resume uses. Nothing a run wrote is
deleted except the checkpoints that ``train.keep_checkpoints`` retires: a run resumed from an older checkpoint moves
the later ones (an abandoned timeline, or damaged ones) to ``checkpoints/abandoned/`` instead of deleting them.

Resuming checks a checkpoint before loading it (:func:`verify_checkpoint`): every file whole and, for checkpoints
that record them, the same bytes as were written (sha256). A damaged file, or one copied in from another run or
step, makes the resume fall back on the previous intact checkpoint, saying so.

One module a job: :mod:`~morl.checkpoint.write` writes checkpoints, :mod:`~morl.checkpoint.verify` checks their
files, :mod:`~morl.checkpoint.find` picks the one to resume from, :mod:`~morl.checkpoint.load` loads it,
:mod:`~morl.checkpoint.rng` captures and restores the random-number streams, :mod:`~morl.checkpoint.reference`
records and checks the reference policy; :mod:`~morl.checkpoint.layout` names the files and
:mod:`~morl.checkpoint.errors` holds the errors. Stopping on SIGINT/SIGTERM is :mod:`morl.signals`' job.

Example:
    >>> pipe.fit(train, evals)  # doctest: +SKIP
    >>> pipe2 = Pipeline(...same components...)  # doctest: +SKIP
    >>> pipe2.fit(train, evals, resume_from="runs/20260101-120000")  # newest complete checkpoint  # doctest: +SKIP
"""

from morl.checkpoint.errors import CheckpointError, CheckpointWriteError, CorruptCheckpoint
from morl.checkpoint.find import (
    checkpoint_step,
    find_checkpoint,
    latest_run,
    list_checkpoints,
    resume_intact,
    run_dir_of,
)
from morl.checkpoint.layout import ABANDONED, CHECKPOINTS, DIGESTS, MARKER, STATE_FILE, STATE_TENSORS
from morl.checkpoint.load import (
    Loaded,
    load_rng,
    load_state_tensors,
    load_tensors,
    load_weights,
    prepare_resume,
    read_checkpoint,
)
from morl.checkpoint.reference import check_reference, reference_pointer, weights_fingerprint
from morl.checkpoint.rng import rng_state, set_rng_state
from morl.checkpoint.verify import verify_checkpoint, verify_safetensors
from morl.checkpoint.write import checkpoint_bytes, save_checkpoint, write_failed
from morl.signals import GracefulStop, Interrupted

__all__ = [
    "ABANDONED",
    "CHECKPOINTS",
    "DIGESTS",
    "MARKER",
    "STATE_FILE",
    "STATE_TENSORS",
    "CheckpointError",
    "CheckpointWriteError",
    "CorruptCheckpoint",
    "GracefulStop",
    "Interrupted",
    "Loaded",
    "check_reference",
    "checkpoint_bytes",
    "checkpoint_step",
    "find_checkpoint",
    "latest_run",
    "list_checkpoints",
    "load_rng",
    "load_state_tensors",
    "load_tensors",
    "load_weights",
    "prepare_resume",
    "read_checkpoint",
    "reference_pointer",
    "resume_intact",
    "rng_state",
    "run_dir_of",
    "save_checkpoint",
    "set_rng_state",
    "verify_checkpoint",
    "verify_safetensors",
    "weights_fingerprint",
    "write_failed",
]
