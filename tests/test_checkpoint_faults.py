"""Faults while checkpointing and resuming: a disk that fills up during a run, a newest checkpoint whose pickled
weights are damaged or were made to run code, another run's optimizer state copied into a checkpoint.

Each ends in a message that names the file, says what went wrong and what to do, never a Python traceback; the last
complete checkpoint stays intact and is the one a resume uses; the torn or faulty checkpoint is moved to
``checkpoints/abandoned/``, not deleted.

The full disk is a real one: a 20 MB tmpfs mounted in a user and mount namespace of its own by a helper process
(``unshare --user --map-root-user --mount``), which this process reaches through the helper's ``/proc/PID/root``, so
the runs on it go through the CLI in this process (seconds) instead of a fresh interpreter each.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import shlex
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from morl.checkpoint import CorruptCheckpoint, list_checkpoints, verify_checkpoint
from morl.run import JsonlWriter, Manifest, read_jsonl
from tests.small_runs import checkpointed_recipe, invoke_cli, snapshot


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A three-step run with a checkpoint per step (its recipe, its directory); tests damage copies of it."""
    home = tmp_path_factory.mktemp("faults")
    recipe = checkpointed_recipe(home, tiny_model_dir)
    code, text = invoke_cli("fit", recipe, "--output-dir", home / "run")
    assert code == 0, text
    return recipe, home / "run"


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run[1], copy)
    return copy


# ---- a full disk ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 20 MB tmpfs, as seen from this process; skipped where no user and mount namespace can be made."""
    if shutil.which("unshare") is None:
        pytest.skip("a full disk needs util-linux's unshare to mount a small tmpfs")
    mount = tmp_path_factory.mktemp("small-disk")
    script = f"mount -t tmpfs -o size=20m tmpfs {shlex.quote(str(mount))} && echo mounted && exec sleep 3600"
    holder = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if holder.stdout.readline().strip() != "mounted":
            holder.wait(timeout=10)
            why = holder.stderr.read().strip()
            pytest.skip(f"cannot mount a 20 MB tmpfs (unshare --user --map-root-user --mount, then mount): {why}")
        disk = Path(f"/proc/{holder.pid}/root") / mount.relative_to("/")
        info = os.statvfs(disk)
        if info.f_blocks * info.f_frsize > 21 * 2**20:
            pytest.skip(f"the tmpfs mounted by process {holder.pid} is not visible through /proc/{holder.pid}/root")
        yield disk
    finally:
        holder.kill()
        holder.wait()


def _usage(path: Path) -> int:
    """Bytes ``path`` takes on a tmpfs, which stores every file in whole pages."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(math.ceil(p.stat().st_size / mmap.PAGESIZE) * mmap.PAGESIZE for p in files)


def _clear(disk: Path) -> None:
    for path in disk.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _fill(disk: Path, leave: int = 0) -> None:
    """Fill ``disk`` with one more file, so that ``leave`` bytes stay free."""
    info = os.statvfs(disk)
    size = max(info.f_bavail * info.f_frsize - leave, 0)
    with open(disk / "filler", "ab") as fh:
        for _ in range(size // 2**20):
            fh.write(bytes(2**20))
        fh.write(bytes(size % 2**20))


# what each fill level leaves free, in what this run writes (its small files: manifest, recipe, metrics; one
# checkpoint; the final model and state), and the write that runs out of space
LEVELS = {
    "no-room": ((0, 0, 0), ".lock"),
    "first-checkpoint-does-not-fit": ((1, 0.5, 0), "step-000001"),
    "second-checkpoint-does-not-fit": ((1, 1.5, 0), "step-000002"),
    "final-model-does-not-fit": ((1, 3, 0.5), "final model"),
}


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_full_disk_stops_with_a_message_keeps_the_last_checkpoint_and_resumes(trained_run, small_disk, level):
    recipe, reference = trained_run
    checkpoint = _usage(reference / "checkpoints" / "step-000001")
    final = _usage(reference / "model") + _usage(reference / "training_state.json")
    files = _usage(reference) - _usage(reference / "checkpoints") - final
    (of_files, of_checkpoint, of_final), fails_in = LEVELS[level]
    _clear(small_disk)
    _fill(small_disk, leave=int(of_files * files + of_checkpoint * checkpoint + of_final * final))
    run = small_disk / "run"

    code, text = invoke_cli("fit", recipe, "--output-dir", run)
    assert code == 1 and "No space left on device" in text and fails_in in text, text
    complete = list_checkpoints(run)[0]
    for c in complete:
        verify_checkpoint(c)  # whole, and the bytes that were written
    torn = sorted(run.glob("checkpoints/abandoned/*/step-*"))
    if fails_in.startswith("step-"):  # the torn checkpoint is kept aside, never a complete one
        assert [t.name for t in torn] == [fails_in] and not (torn[0] / "complete").exists(), torn
        assert f"checkpoint {fails_in}" in text and "it needs about" in text and "free" in text, text
    assert not list(run.glob("checkpoints/.tmp-*"))
    if complete:
        assert f"{complete[-1]}, is intact" in text and f"--resume {run}" in text, text
    else:
        assert f"--output-dir {run} --overwrite" in text, text

    (small_disk / "filler").unlink()  # space freed, the run goes on as the message said
    if complete:
        code, text = invoke_cli("fit", recipe, "--resume", run)
        assert code == 0 and f"from {complete[-1].name}" in text, text
    else:
        code, text = invoke_cli("fit", recipe, "--output-dir", run, "--overwrite")
        assert code == 0, text
    assert [c.name for c in list_checkpoints(run)[0]] == ["step-000001", "step-000002", "step-000003"]
    assert (run / "model" / "model.safetensors").is_file() and (run / "training_state.json").is_file()


def test_metrics_and_manifest_on_a_full_disk_name_the_file_and_keep_their_rows(trained_run, small_disk, capsys):
    _clear(small_disk)
    run = small_disk / "run"
    run.mkdir()
    shutil.copy(trained_run[1] / "manifest.json", run / "manifest.json")
    manifest, before = Manifest.load(run), (run / "manifest.json").read_bytes()
    metrics = run / "metrics.jsonl"
    log = JsonlWriter(metrics)
    log.write({"step": 1})
    _fill(small_disk)
    with pytest.raises(OSError) as full:
        log.write({"step": 2, "text": "x" * 3 * mmap.PAGESIZE})  # a part may fit in the last page: a torn line
    assert full.value.errno == errno.ENOSPC and full.value.filename == str(metrics), full.value
    log.close()  # nothing left buffered to fail again
    manifest.end_segment(run, to_step=2, status="failed")  # said, never raised over the error that ended the run
    assert f"{run / 'manifest.json'}: No space left on device" in capsys.readouterr().err
    assert (run / "manifest.json").read_bytes() == before  # the file as it was

    (small_disk / "filler").unlink()
    with JsonlWriter(metrics) as log:
        log.write({"step": 2})
    assert read_jsonl(metrics) == [{"step": 1}, {"step": 2}]


# ---- pickled weights that do not load ----------------------------------------------------------------------


class _RunsCode:
    """Pickles as a call of ``os.system``: what a model file made to run code holds."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def _pickled_weights(model_dir: Path, kind: str, sentinel: Path) -> None:
    """Replace a model folder's ``model.safetensors`` with a ``pytorch_model.bin``: its own weights with damaged
    pickle bytes (the zip directory intact, so the file looks whole), or a pickle that calls ``os.system``."""
    out = model_dir / "pytorch_model.bin"
    if kind == "damaged":
        torch.save(load_file(str(model_dir / "model.safetensors")), out)
        with zipfile.ZipFile(out) as archive:
            entry = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
        data = bytearray(out.read_bytes())
        name_length, extra_length = struct.unpack("<HH", data[entry.header_offset + 26 : entry.header_offset + 30])
        start = entry.header_offset + 30 + name_length + extra_length  # the pickle's first byte
        data[start + 2 : start + 34] = b"\xff" * 32
        out.write_bytes(bytes(data))
    else:
        torch.save({"model.embed_tokens.weight": _RunsCode(sentinel)}, out)
    (model_dir / "model.safetensors").unlink()


REASONS = {"damaged": "damaged", "runs-code": "calls posix.system"}


@pytest.mark.parametrize("marker", ["with-digests", "without-digests"])
@pytest.mark.parametrize("kind", sorted(REASONS))
def test_resume_past_pickled_weights_that_do_not_load(trained_run, run_copy, tmp_path, kind, marker):
    newest = run_copy / "checkpoints" / "step-000003"
    sentinel = tmp_path / "code-ran"
    _pickled_weights(newest / "model", kind, sentinel)
    if marker == "without-digests":  # a checkpoint of an earlier morl: only loading finds the fault
        (newest / "complete").write_text('{"step": 3, "time": 0}\n')
    damaged = snapshot(newest)

    code, text = invoke_cli("fit", trained_run[0], "--resume", run_copy, "--set", "train.steps=4")
    assert code == 0, text
    assert "step-000003/model/" in text and "previous intact checkpoint" in text, text
    if marker == "without-digests":
        assert "step-000003/model/pytorch_model.bin" in text and REASONS[kind] in text, text
    shelved = list((run_copy / "checkpoints" / "abandoned").glob("*/step-000003"))
    assert len(shelved) == 1 and snapshot(shelved[0]) == damaged  # moved aside whole, not deleted
    assert [c.name for c in list_checkpoints(run_copy)[0]][-1] == "step-000004"
    assert not sentinel.exists()


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_eval_of_pickled_weights_that_do_not_load_names_the_file(trained_run, run_copy, tmp_path, kind):
    sentinel = tmp_path / "code-ran"
    newest = run_copy / "checkpoints" / "step-000003"
    _pickled_weights(newest / "model", kind, sentinel)
    code, text = invoke_cli("eval", trained_run[0], "--checkpoint", newest)
    assert code == 2 and "step-000003/model/model.safetensors: missing" in text, text  # the digests' check

    (newest / "complete").write_text('{"step": 3, "time": 0}\n')  # a checkpoint of an earlier morl
    model = tmp_path / "model"  # and a plain model folder, as a run's final model/
    shutil.copytree(trained_run[1] / "model", model)
    _pickled_weights(model, kind, sentinel)
    for folder, weights in ((newest, newest / "model" / "pytorch_model.bin"), (model, model / "pytorch_model.bin")):
        code, text = invoke_cli("eval", trained_run[0], "--checkpoint", folder)
        assert code == 2 and f"{weights}: " in text and REASONS[kind] in text, text
    assert not sentinel.exists()


# ---- another run's optimizer state ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_run(trained_run, tmp_path_factory) -> Path:
    """The same recipe with another learning rate, which its optimizer state records (a resume would take it)."""
    out = tmp_path_factory.mktemp("other") / "run"
    code, text = invoke_cli(
        "fit", trained_run[0], "--output-dir", out, "--set", "train.lr=0.0042", "--set", "train.seed=7"
    )
    assert code == 0, text
    return out


def test_another_runs_optimizer_state_is_refused_and_shelved(trained_run, other_run, run_copy):
    newest = run_copy / "checkpoints" / "step-000003"
    shutil.copy(other_run / "checkpoints" / "step-000003" / "optimizer.pt", newest / "optimizer.pt")
    assert torch.load(newest / "optimizer.pt")["param_groups"][0]["initial_lr"] == 0.0042
    copied = snapshot(newest)
    before = snapshot(run_copy)

    code, text = invoke_cli("fit", trained_run[0], "--resume", newest, "--set", "train.steps=4")
    assert code == 2 and "step-000003/optimizer.pt: not the file this checkpoint wrote" in text, text
    assert "copied in from another run or step" in text, text
    assert snapshot(run_copy) == before  # named directly: refused, nothing touched

    code, text = invoke_cli("fit", trained_run[0], "--resume", run_copy, "--set", "train.steps=4")
    assert code == 0 and "step-000003/optimizer.pt: not the file" in text, text
    assert "resuming from the previous intact checkpoint" in text and "from step-000002" in text, text
    shelved = list((run_copy / "checkpoints" / "abandoned").glob("*/step-000003"))
    assert len(shelved) == 1 and snapshot(shelved[0]) == copied


def test_a_file_changed_after_a_checkpoint_passed_is_still_caught(other_run, run_copy):
    """A resume verifies a checkpoint once per process (the CLI finds it, then the loop loads it): a file written
    after that check must still fail the next one."""
    newest = run_copy / "checkpoints" / "step-000003"
    verify_checkpoint(newest)
    verify_checkpoint(newest)  # the same files: passes again
    shutil.copy(other_run / "checkpoints" / "step-000003" / "optimizer.pt", newest / "optimizer.pt")
    with pytest.raises(CorruptCheckpoint, match="optimizer.pt: not the file this checkpoint wrote"):
        verify_checkpoint(newest)
