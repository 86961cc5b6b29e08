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
    RunDirError,
    RunExistsError,
    RunLock,
    RunLockedError,
    check_new_run,
    fresh_run_dir,
    holds_run,
)

REPO = Path(__file__).resolve().parents[2]


def make_run(path: Path) -> Path:
    """A folder with every output a morl run writes, and a user's note."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "recipe.yaml", "metrics.jsonl", "events.jsonl", "controller_state.json"):
        (path / name).write_text("{}\n")
    for name in ("checkpoints/step-000002/model", "model", "reference-model", "tensorboard", "data"):
        (path / name).mkdir(parents=True)
        (path / name / "file.bin").write_bytes(b"x")
    (path / "notes.txt").write_text("my notes\n")
    return path


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


def test_overwrite_removes_morl_outputs_and_keeps_user_files(tmp_path):
    run = make_run(tmp_path / "run")
    (run / ".lock").write_text("")
    (run / ".manifest.json.abc.tmp").write_text("half")
    check_new_run(run, overwrite=True)
    for name in RUN_OUTPUTS:
        assert not (run / name).exists(), name
    assert (run / "notes.txt").read_text() == "my notes\n"
    assert (run / ".lock").exists()
    assert not (run / ".manifest.json.abc.tmp").exists()
    assert not holds_run(run)
    check_new_run(run)  # now a fresh run may start


def test_overwrite_of_a_folder_without_a_run_changes_nothing(tmp_path):
    (tmp_path / "events.jsonl").write_text("{}\n")  # not a marker: no run here
    check_new_run(tmp_path, overwrite=True)
    assert (tmp_path / "events.jsonl").exists()


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
