"""Claiming a run directory: refuse an earlier run, overwrite only morl's files, fresh names, the run lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from morl.run import (
    RUN_OUTPUTS,
    Manifest,
    RunDirError,
    RunExistsError,
    RunLock,
    RunLockedError,
    check_new_run,
    fresh_run_dir,
    holds_run,
)

REPO = Path(__file__).resolve().parents[2]
METHOD = {
    "controller": "fixed",
    "weights_act_on": "reward",
    "normalization": "free",
    "scalarizer": "linear",
    "advantage": "group_norm",
    "algo": "grpo",
}


def start_run(path: Path, data: str | None = None, to_step: int | None = 2, status: str = "finished") -> Manifest:
    """The manifest of a run in ``path`` whose data is ``data`` (default: rows kept in the run, as a pipeline built in
    Python keeps them), its one segment ended at ``to_step`` with ``status`` (``to_step=None``: still running)."""
    path.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else str(path / "data" / "train.jsonl")
    recipe = {"train": {"steps": 3}, "data": {"train": data, "eval": None}}
    manifest = Manifest.create(path, recipe, [{"name": "accuracy", "reward": "acc"}], METHOD)
    if to_step is not None:
        manifest.end_segment(path, to_step=to_step, status=status)
    return manifest


def make_run(path: Path) -> Path:
    """A folder with every output a morl run writes (its manifest lists them), and a user's note."""
    start_run(path)
    files = (
        "recipe.yaml",
        "metrics.jsonl",
        "events.jsonl",
        "completions.jsonl",
        "controller_state.json",
        "training_state.json",
    )
    for name in files:
        (path / name).write_text("{}\n")
    for name in ("checkpoints/step-000002/model", "model", "reference-model", "tensorboard", "data"):
        (path / name).mkdir(parents=True)
        (path / name / "file.bin").write_bytes(b"x")
    (path / "notes.txt").write_text("my notes\n")
    return path


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---- holds_run / check_new_run -----------------------------------------------------------------------------------


@pytest.mark.parametrize("marker", ["manifest.json", "metrics.jsonl", "recipe.yaml"])
def test_holds_run_sees_each_marker_file(tmp_path, marker):
    assert not holds_run(tmp_path)
    (tmp_path / marker).write_text("")
    assert holds_run(tmp_path)


@pytest.mark.parametrize("marker", ["checkpoints", "model"])
def test_holds_run_sees_each_marker_folder(tmp_path, marker):
    (tmp_path / marker).mkdir()
    assert holds_run(tmp_path)


def test_holds_run_ignores_missing_and_foreign_folders(tmp_path):
    assert not holds_run(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".lock").write_text("")
    assert not holds_run(tmp_path)


def test_check_new_run_accepts_empty_and_missing_folders(tmp_path):
    check_new_run(tmp_path)
    check_new_run(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()  # checking creates nothing


def test_check_new_run_refuses_an_earlier_run_and_says_what_to_do(tmp_path):
    start_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunExistsError) as info:
        check_new_run(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert f"--resume {tmp_path}" in message
    assert "--overwrite" in message
    assert "--output-dir" in message and "train.output_dir" in message
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'  # nothing touched
    assert isinstance(info.value, RunDirError)


def test_the_refusal_names_the_python_arguments_too(tmp_path):
    start_run(tmp_path)
    with pytest.raises(RunExistsError) as info:
        check_new_run(tmp_path)
    message = " ".join(str(info.value).split())
    assert f"resume_from={str(tmp_path)!r}" in message and "overwrite=True" in message, message
    assert "TrainConfig(output_dir=" in message, message


def test_overwrite_removes_morl_outputs_and_keeps_user_files(tmp_path):
    run = make_run(tmp_path / "run")
    (run / ".lock").write_text("")
    (run / ".manifest.json.abc.tmp").write_text("half")
    removed = check_new_run(run, overwrite=True)
    for name in RUN_OUTPUTS:
        assert not (run / name).exists(), name
    assert sorted(removed) == sorted(RUN_OUTPUTS)
    assert (run / "notes.txt").read_text() == "my notes\n"
    assert (run / ".lock").exists()
    assert not (run / ".manifest.json.abc.tmp").exists()
    assert not holds_run(run)
    check_new_run(run)  # now a fresh run may start


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_the_users_own_model_and_data_is_refused_and_untouched(tmp_path, overwrite):
    """No manifest, so no morl run: its model/ and data/ are the user's, whatever their names."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_weights.txt").write_text("weights\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "1+1"}\n')
    before = tree(tmp_path)
    with pytest.raises(RunExistsError) as info:
        check_new_run(tmp_path, overwrite=overwrite)
    message = " ".join(str(info.value).split())
    assert "model/" in message and "data/" in message and "no manifest.json" in message, message
    assert "not a morl run" in message and "Nothing was removed" in message, message
    assert tree(tmp_path) == before


def test_overwrite_of_a_folder_with_only_files_a_run_never_writes_changes_nothing(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    assert check_new_run(tmp_path, overwrite=True) == []
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_overwrite_of_a_run_of_an_older_morl_without_a_manifest_is_refused(tmp_path):
    for name in ("recipe.yaml", "metrics.jsonl", "events.jsonl"):
        (tmp_path / name).write_text("{}\n")
    before = tree(tmp_path)
    with pytest.raises(RunExistsError, match="no manifest.json"):
        check_new_run(tmp_path, overwrite=True)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("damage", [b"\xc0\xff\x00garbage\x81", b"{not json", b'{"format": 1}'])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_damaged_manifest_is_never_taken_for_a_list_of_morls_files(tmp_path, damage, overwrite):
    run = make_run(tmp_path / "run")
    (run / "manifest.json").write_bytes(damage)
    before = tree(run)
    with pytest.raises(RunDirError) as info:
        check_new_run(run, overwrite=overwrite)
    message = " ".join(str(info.value).split())
    assert str(run / "manifest.json") in message and "removes nothing" in message, message
    assert tree(run) == before


def test_a_manifest_that_is_a_named_pipe_is_refused_not_read(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "manifest.json").unlink()
    os.mkfifo(run / "manifest.json")
    with pytest.raises(RunDirError, match="named pipe"):
        check_new_run(run, overwrite=True)
    assert (run / "model" / "file.bin").exists()


def test_overwrite_keeps_a_users_data_folder_the_run_never_wrote(tmp_path):
    """A run from a recipe reads its data where the recipe says: a data/ beside it is the user's."""
    run = tmp_path / "run"
    start_run(run, data=str(tmp_path / "elsewhere.jsonl"))
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "data").mkdir()
    (run / "data" / "train.jsonl").write_text("mine\n")
    before = tree(run)
    with pytest.raises(RunExistsError) as info:
        check_new_run(run, overwrite=True)
    assert "data/" in str(info.value) and "does not list" in str(info.value)
    assert tree(run) == before
    (run / "data" / "train.jsonl").rename(tmp_path / "moved.jsonl")
    (run / "data").rmdir()
    assert sorted(check_new_run(run, overwrite=True)) == ["manifest.json", "metrics.jsonl"]


def test_overwrite_removes_only_names_morl_writes_whatever_the_manifest_lists(tmp_path):
    run = tmp_path / "run"
    manifest = start_run(run)
    (run / "model").mkdir()
    (run / "notes.txt").write_text("mine\n")
    manifest.outputs = ["notes.txt", "../outside", "/etc", "model", "manifest.json"]
    manifest.save(run)
    (tmp_path / "outside").write_text("x\n")
    assert sorted(check_new_run(run, overwrite=True)) == ["manifest.json", "model"]
    assert (run / "notes.txt").exists() and (tmp_path / "outside").exists()


# ---- a run that stopped before its first step ---------------------------------------------------------------------


def _stopped_run(path: Path, to_step: int | None, status: str, checkpoint: str | None, rows: list[dict]) -> Path:
    start_run(path, to_step=to_step, status=status)
    (path / "recipe.yaml").write_text("train: {steps: 3}\n")
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if checkpoint:
        (path / "checkpoints" / checkpoint).mkdir(parents=True)
    (path / "notes.txt").write_text("mine\n")
    return path


EVAL_AT_0 = {"kind": "eval", "step": 0, "eval/greedy/accuracy": 0.5}
TRAIN_AT_1 = {"kind": "train", "step": 1, "loss": 0.1}


@pytest.mark.parametrize(
    ("to_step", "status", "checkpoint", "rows"),
    [
        (0, "failed", None, []),
        (0, "failed", "step-000000", [EVAL_AT_0]),  # a reward failing on step 1 checkpoints the initial weights
        (0, "interrupted", "step-000000", [EVAL_AT_0]),
        (None, "running", None, [EVAL_AT_0]),  # killed before its first step ended: the manifest still says running
    ],
    ids=["failed", "failed-reward", "interrupted", "killed"],
)
def test_a_run_that_stopped_before_its_first_step_gives_its_folder_up(tmp_path, to_step, status, checkpoint, rows):
    run = _stopped_run(tmp_path / "run", to_step, status, checkpoint, rows)
    removed = check_new_run(run)  # no overwrite needed: nothing was learned
    assert "manifest.json" in removed and "metrics.jsonl" in removed
    assert not (run / "manifest.json").exists() and not (run / "checkpoints").exists()
    assert (run / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize(
    ("to_step", "status", "checkpoint", "rows"),
    [
        (2, "failed", None, [TRAIN_AT_1]),
        (0, "finished", None, [EVAL_AT_0]),  # train.steps=0: an evaluation of the initial model, a result
        (0, "failed", "step-000002", []),
        (None, "running", None, [EVAL_AT_0, TRAIN_AT_1]),  # killed after logging a step
    ],
    ids=["failed-later", "finished-at-0", "later-checkpoint", "killed-after-a-step"],
)
def test_a_run_that_learned_something_keeps_its_folder(tmp_path, to_step, status, checkpoint, rows):
    run = _stopped_run(tmp_path / "run", to_step, status, checkpoint, rows)
    before = tree(run)
    with pytest.raises(RunExistsError, match="--overwrite"):
        check_new_run(run)
    assert tree(run) == before


def test_a_resumed_run_that_failed_keeps_its_folder(tmp_path):
    run = _stopped_run(tmp_path / "run", 0, "failed", None, [])
    manifest = Manifest.load(run)
    manifest.begin_segment(run, "resume", from_step=2, recipe={})
    manifest.end_segment(run, to_step=2, status="failed")
    with pytest.raises(RunExistsError):
        check_new_run(run)


def test_check_new_run_refuses_a_file(tmp_path):
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        check_new_run(target)
    with pytest.raises(RunDirError, match="is a file"):
        check_new_run(target / "sub" / "run")


def test_check_new_run_refuses_an_unwritable_parent(tmp_path, monkeypatch):
    parent = tmp_path / "readonly"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == parent else real_access(p, mode))
    with pytest.raises(RunDirError, match="permission denied") as info:
        check_new_run(parent / "run")
    assert str(parent) in str(info.value)
    with pytest.raises(RunDirError, match="permission denied"):
        check_new_run(parent)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_new_run_refuses_a_read_only_folder_for_real(tmp_path):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match="permission denied"):
            check_new_run(parent / "run")
    finally:
        parent.chmod(0o700)


# ---- fresh_run_dir -----------------------------------------------------------------------------------------------


def test_fresh_run_dir_never_returns_an_existing_folder(tmp_path):
    first = fresh_run_dir(tmp_path, stem="exp")
    second = fresh_run_dir(tmp_path, stem="exp")
    (tmp_path / "exp-3").write_text("a file takes the name too")
    third = fresh_run_dir(tmp_path, stem="exp")
    assert [first.name, second.name, third.name] == ["exp", "exp-2", "exp-4"]
    assert all(p.is_dir() for p in (first, second, third))


def test_fresh_run_dir_names_by_time(tmp_path):
    path = fresh_run_dir(tmp_path / "runs")
    assert path.parent == tmp_path / "runs"
    assert len(path.name) == len("20260101-120000")
    time.strptime(path.name, "%Y%m%d-%H%M%S")


# ---- RunLock -----------------------------------------------------------------------------------------------------


def test_lock_records_its_holder_and_is_released(tmp_path):
    run = tmp_path / "run"
    with RunLock(run) as lock:
        assert lock.held
        holder = json.loads((run / ".lock").read_text())
        assert holder["pid"] == os.getpid()
        assert holder["host"] and holder["started"]
    assert not lock.held
    with RunLock(run):  # free again
        pass


def test_second_lock_in_the_same_process_fails_at_once(tmp_path):
    with RunLock(tmp_path):
        start = time.monotonic()
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path).acquire()
        assert time.monotonic() - start < 1
        message = str(info.value)
        assert str(tmp_path) in message
        assert f"pid {os.getpid()}" in message and "this process" in message
        assert info.value.holder["pid"] == os.getpid()
    RunLock(tmp_path).acquire().release()


def test_same_lock_object_cannot_be_taken_twice(tmp_path):
    lock = RunLock(tmp_path).acquire()
    try:
        with pytest.raises(RunLockedError):
            lock.acquire()
    finally:
        lock.release()
    lock.release()  # a second release is harmless


def test_lock_is_released_when_the_body_raises(tmp_path):
    with pytest.raises(ValueError), RunLock(tmp_path):
        raise ValueError("boom")
    with RunLock(tmp_path):
        pass


def test_check_new_run_lets_this_process_overwrite_under_its_own_lock(tmp_path):
    make_run(tmp_path)
    with RunLock(tmp_path):
        check_new_run(tmp_path, overwrite=True)
    assert not holds_run(tmp_path)


HOLD = """
import sys, time
from morl.run import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_lock_held_by_another_process_blocks_until_it_is_killed(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "locked", proc.stderr.read()
        with pytest.raises(RunLockedError) as info:
            RunLock(run).acquire()
        assert f"pid {proc.pid}" in str(info.value)
        assert info.value.holder["pid"] == proc.pid
        with pytest.raises(RunLockedError):  # nobody may discard a live run
            check_new_run(run, overwrite=True)
        assert holds_run(run)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    with RunLock(run) as lock:  # the OS released the dead holder's lock
        assert lock.held
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
