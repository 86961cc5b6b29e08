"""Where a run's checkpoints sit and what their folders and files are called (the package docstring draws the
layout)."""

from __future__ import annotations

import re

CHECKPOINTS = "checkpoints"
ABANDONED = "abandoned"
MARKER = "complete"
STATE_FILE = "training_state.json"
STATE_TENSORS = "state_tensors.safetensors"
DIGESTS = "sha256"  # the marker's record of every file the checkpoint wrote: relative path -> sha256
_STEP_DIR = re.compile(r"step-(\d+)")
_TMP_PREFIX = ".tmp-"
