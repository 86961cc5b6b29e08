"""manifest.json: created once, round-trips, records segments, written atomically."""

from __future__ import annotations

import errno
import json
import os
import platform
from datetime import datetime
from importlib import metadata
from pathlib import Path

import pytest
from pydantic import BaseModel

from morl.run import (
    RUN_OUTPUTS,
    Manifest,
    Method,
    Objective,
    RunDirError,
    RunExistsError,
    Segment,
    check_new_run,
    holds_run,
    library_versions,
    read_regular_file,
)
from morl.run.identity import check_resume

RECIPE = {"name": "demo", "controller": {"name": "ctwa", "lr": 0.05}, "train": {"steps": 10, "output_dir": None}}
OBJECTIVES = [
    {"name": "accuracy", "reward": "morl.rewards.accuracy.Accuracy"},
    Objective(name="conciseness", moving_target=True, reward="morl.rewards.conciseness.Conciseness"),
    {"name": "length", "direction": "minimize", "reward": "my.length"},
]
METHOD = {
    "controller": "ctwa",
    "weights_act_on": "reward",
    "normalization": "free",
    "scalarizer": "linear",
    "advantage": "group_norm",
    "algo": "grpo",
    "targets": [0.15, 0.08, 0.08],
}


def test_create_writes_the_documented_layout(tmp_path):
    manifest = Manifest.create(tmp_path, RECIPE, OBJECTIVES, METHOD)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["format"] == 1
    datetime.fromisoformat(raw["created"])
    assert raw["recipe"] == RECIPE
    assert raw["objectives"][0] == {
        "name": "accuracy",
        "direction": "maximize",
        "moving_target": False,
        "reward": "morl.rewards.accuracy.Accuracy",
    }
    assert raw["objectives"][1]["moving_target"] is True
    assert raw["objectives"][2]["direction"] == "minimize"
    assert raw["method"] == METHOD  # extra keys kept
    assert raw["versions"]["python"] == platform.python_version()
    assert raw["versions"]["pydantic"] == metadata.version("pydantic")
    assert raw["segments"] == [
        {
            "index": 0,
            "kind": "start",
            "from_step": 0,
            "to_step": None,
            "started": raw["created"],
            "ended": None,
            "status": "running",
            "recipe": RECIPE,
            "accepted_differences": [],
        }
    ]
    assert manifest.current_segment.status == "running"
    assert holds_run(tmp_path)


def test_round_trip(tmp_path):
    created = Manifest.create(tmp_path, RECIPE, OBJECTIVES, METHOD)
    loaded = Manifest.load(tmp_path)
    assert loaded == created
    assert loaded.method.targets == [0.15, 0.08, 0.08]
    assert isinstance(loaded.current_segment, Segment)


def test_recipe_is_stored_in_plain_json_form(tmp_path):
    class Train(BaseModel):
        steps: int = 3
        output_dir: Path = Path("runs/x")

    class Recipe(BaseModel):
        rewards: tuple[str, ...] = ("accuracy", "clarity")
        lr: float = float("nan")
        train: Train = Train()

    manifest = Manifest.create(tmp_path, Recipe(), OBJECTIVES, METHOD)
    expected = {"rewards": ["accuracy", "clarity"], "lr": None, "train": {"steps": 3, "output_dir": "runs/x"}}
    assert manifest.recipe == expected
    assert Manifest.load(tmp_path).recipe == expected
    assert check_resume(Manifest.load(tmp_path).recipe, Recipe()) == []  # in-memory and stored compare equal


def test_create_refuses_an_existing_manifest(tmp_path):
    Manifest.create(tmp_path, RECIPE, OBJECTIVES, METHOD)
    before = (tmp_path / "manifest.json").read_text()
    with pytest.raises(RunExistsError):
        Manifest.create(tmp_path, {"other": 1}, OBJECTIVES, METHOD)
    assert (tmp_path / "manifest.json").read_text() == before
    check_new_run(tmp_path, overwrite=True)
    Manifest.create(tmp_path, {"other": 1}, OBJECTIVES, METHOD)
    assert Manifest.load(tmp_path).recipe == {"other": 1}


def test_load_absent_is_none(tmp_path):
    assert Manifest.load(tmp_path) is None
    assert Manifest.load(tmp_path / "missing") is None


@pytest.mark.parametrize("text", ["{not json", '{"format": 1}', "", '{"format": 1, "segments": []}'])
def test_load_unreadable_names_the_file(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(RunDirError) as info:
        Manifest.load(tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_load_of_garbage_bytes_names_the_file(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b"\xc0\xff\x00\x81garbage")
    with pytest.raises(RunDirError) as info:
        Manifest.load(tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_load_refuses_a_manifest_that_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "manifest.json")  # read, it would wait for a writer forever
    with pytest.raises(RunDirError, match="named pipe"):
        Manifest.load(tmp_path)


def test_create_lists_the_names_the_run_writes(tmp_path):
    manifest = Manifest.create(tmp_path, RECIPE, OBJECTIVES, METHOD)
    assert manifest.outputs == [name for name in RUN_OUTPUTS if name != "data"]  # the recipe's data is the user's
    assert json.loads((tmp_path / "manifest.json").read_text())["outputs"] == manifest.outputs
    assert Manifest.load(tmp_path).run_outputs(tmp_path) == manifest.outputs


def test_a_run_that_keeps_its_rows_lists_its_data_folder(tmp_path):
    """A pipeline built in Python saves the rows it was handed in run/data and points its recipe there."""
    recipe = {**RECIPE, "data": {"train": str(tmp_path / "data" / "train.jsonl"), "eval": None}}
    assert "data" in Manifest.create(tmp_path, recipe, OBJECTIVES, METHOD).outputs


def test_a_manifest_written_before_outputs_were_listed_gets_the_same_list(tmp_path):
    manifest = Manifest.create(tmp_path, RECIPE, OBJECTIVES, METHOD)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    del raw["outputs"]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    old = Manifest.load(tmp_path)
    assert old.outputs is None and old.run_outputs(tmp_path) == manifest.outputs


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: os.mkfifo(p), "is a named pipe"),
        (lambda p: p.mkdir(), "directory"),
        (lambda p: p.write_bytes(b"x" * 2048), "over the"),
    ],
    ids=["fifo", "directory", "too-large"],
)
def test_read_regular_file_refuses_before_reading(tmp_path, make, fragment):
    path = tmp_path / "f"
    make(path)
    with pytest.raises(ValueError, match=fragment) as info:
        read_regular_file(path, limit=1024)
    assert str(path) in str(info.value)


def test_read_regular_file_refuses_a_device_and_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="character device"):
        read_regular_file("/dev/zero")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_regular_file(tmp_path / "gone")
    (tmp_path / "ok").write_bytes(b"abc")
    assert read_regular_file(tmp_path / "ok", limit=3) == b"abc"


def test_load_refuses_a_newer_format(tmp_path):
    manifest = Manifest.create(tmp_path, RECIPE, OBJECTIVES, METHOD)
    manifest.format = 2
    manifest.save(tmp_path)
    with pytest.raises(RunDirError, match="format 2"):
        Manifest.load(tmp_path)


def test_segments_record_resumes(tmp_path):
    manifest = Manifest.create(tmp_path, RECIPE, OBJECTIVES, METHOD)
    ended = manifest.end_segment(tmp_path, to_step=6, status="interrupted")
    assert ended.ended is not None and ended.to_step == 6
    changed = {**RECIPE, "controller": {"name": "ctwa", "lr": 0.1}}
    accepted = check_resume(RECIPE, changed, accept=["controller.lr"])
    seg = manifest.begin_segment(tmp_path, "resume", from_step=6, recipe=changed, accepted_differences=accepted)
    assert seg.index == 1 and manifest.current_segment is seg
    manifest.end_segment(tmp_path, to_step=10, status="finished")

    loaded = Manifest.load(tmp_path)
    first, second = loaded.segments
    assert (first.kind, first.from_step, first.to_step, first.status) == ("start", 0, 6, "interrupted")
    assert (second.kind, second.from_step, second.to_step, second.status) == ("resume", 6, 10, "finished")
    assert first.recipe == RECIPE and second.recipe == changed
    assert second.accepted_differences == ["controller.lr: 0.05 -> 0.1"]
    assert loaded.recipe == RECIPE  # the run's recipe is the one it started with


def test_begin_segment_marks_a_dead_segment_interrupted(tmp_path):
    manifest = Manifest.create(tmp_path, RECIPE, OBJECTIVES, METHOD)  # its process "died": still running
    manifest.begin_segment(tmp_path, "resume", from_step=3, recipe=RECIPE)
    loaded = Manifest.load(tmp_path)
    assert [s.status for s in loaded.segments] == ["interrupted", "running"]
    assert loaded.segments[0].to_step is None  # unknown, not invented


def test_end_segment_needs_a_final_status(tmp_path):
    manifest = Manifest.create(tmp_path, RECIPE, OBJECTIVES, METHOD)
    with pytest.raises(ValueError, match="final status"):
        manifest.end_segment(tmp_path, to_step=1, status="running")


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    manifest = Manifest.create(tmp_path, RECIPE, OBJECTIVES, METHOD)
    for step in range(5):
        manifest.end_segment(tmp_path, to_step=step, status="interrupted")
        manifest.begin_segment(tmp_path, "resume", from_step=step, recipe=RECIPE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    assert len(Manifest.load(tmp_path).segments) == 6


def test_failed_save_keeps_the_previous_manifest(tmp_path, monkeypatch, capsys):
    manifest = Manifest.create(tmp_path, RECIPE, OBJECTIVES, METHOD)
    before = (tmp_path / "manifest.json").read_text()

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="No space left on device") as failed:
        manifest.save(tmp_path)
    assert failed.value.filename == str(tmp_path / "manifest.json")  # the message names the file
    # ending a segment runs on every way out of a run, a full disk's too: said, not raised over the run's own error
    manifest.end_segment(tmp_path, to_step=3, status="failed")
    assert "manifest.json: No space left on device" in capsys.readouterr().err
    assert (tmp_path / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_models_validate():
    with pytest.raises(ValueError):
        Segment(index=0, kind="restart", from_step=0, started="t")
    with pytest.raises(ValueError):
        Segment(index=0, kind="start", from_step=0, started="t", status="done")
    with pytest.raises(ValueError):
        Objective(name="x", direction="up", reward="r")
    with pytest.raises(ValueError):
        Method(controller="fixed")  # the rest of the method is required
    assert Method(**METHOD).model_dump() == METHOD


def test_library_versions():
    versions = library_versions()
    assert versions["python"] == platform.python_version()
    for name in ("morl", "torch", "transformers", "accelerate", "pydantic", "numpy", "math-verify"):
        assert versions[name] == metadata.version(name)
    for optional in ("vllm", "peft"):
        try:
            installed = metadata.version(optional)
        except metadata.PackageNotFoundError:
            assert optional not in versions
        else:
            assert versions[optional] == installed
    assert all(isinstance(v, str) for v in versions.values())
