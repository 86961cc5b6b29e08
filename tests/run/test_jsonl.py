"""Append-only JSONL: never truncates, survives a torn last line, and drops rows a resume redid."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from morl.run import JsonlWriter, Manifest, Segment, effective_rows, read_events, read_jsonl, read_metrics

METHOD = {
    "controller": "fixed",
    "weights_act_on": "reward",
    "normalization": "free",
    "scalarizer": "linear",
    "advantage": "group_norm",
    "algo": "grpo",
}


def segment(index: int, from_step: int) -> Segment:
    return Segment(index=index, kind="start" if index == 0 else "resume", from_step=from_step, started="t")


def test_writer_appends_and_never_truncates(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with JsonlWriter(path) as log:
        log.write({"step": 1})
    with JsonlWriter(path) as log:
        log.write({"step": 2})
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert log.closed


def test_each_write_is_flushed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonlWriter(path)
    log.write({"step": 1})
    assert read_jsonl(path) == [{"step": 1}]  # visible before close: a killed run keeps it
    log.close()


def test_torn_last_line_stays_a_line_of_its_own(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"ste')
    with JsonlWriter(path) as log:
        log.write({"step": 2})
    assert path.read_text() == '{"step": 1}\n{"ste\n{"step": 2}\n'
    assert [row["step"] for row in read_jsonl(path)] == [1, 2]


def test_writer_creates_missing_parents(tmp_path):
    path = tmp_path / "a" / "b" / "events.jsonl"
    with JsonlWriter(path) as log:
        log.write({"event": "start"})
    assert read_jsonl(path) == [{"event": "start"}]


def test_non_finite_floats_become_null_everywhere(tmp_path):
    path = tmp_path / "m.jsonl"
    with JsonlWriter(path) as log:
        log.write({"a": math.nan, "b": -math.inf, "c": [1.0, math.inf], "d": {"e": math.nan}, "f": np.float32("nan")})
        log.write({"g": np.float64(0.5), "h": np.arange(3), "i": np.int64(7), "j": 1.5})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_jsonl(path) == [
        {"a": None, "b": None, "c": [1.0, None], "d": {"e": None}, "f": None},
        {"g": 0.5, "h": [0, 1, 2], "i": 7, "j": 1.5},
    ]


def test_unserialisable_values_fail_loudly(tmp_path):
    with JsonlWriter(tmp_path / "m.jsonl") as log, pytest.raises(Exception, match="object"):
        log.write({"x": object()})


def test_read_skips_blank_torn_and_malformed_lines_anywhere(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\n\n{"ste\n   \n[1, 2]\n"text"\nnot json\n{"step": 2}\n{"step": "\xe2\x82')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_read_missing_file_is_empty(tmp_path):
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_effective_rows_drop_steps_a_resume_redid():
    rows = [
        {"step": 1, "v": "a"},
        {"step": 2, "v": "a"},
        {"step": 3, "v": "a"},
        {"step": 4, "v": "a"},
        {"step": 3, "v": "b", "segment": 1},
        {"step": 4, "v": "b", "segment": 1},
    ]
    kept = effective_rows(rows, [segment(0, 0), segment(1, 2)])
    assert [(r["step"], r.get("segment", 0)) for r in kept] == [(1, 0), (2, 0), (3, 1), (4, 1)]


def test_effective_rows_over_three_segments():
    rows = [{"step": s, "segment": 0} for s in range(1, 7)]
    rows += [{"step": s, "segment": 1} for s in range(5, 9)]  # resumed from 4, ran to 8
    rows += [{"step": s, "segment": 2} for s in range(3, 5)]  # resumed from 2 (an older checkpoint)
    kept = effective_rows(rows, [segment(0, 0), segment(1, 4), segment(2, 2)])
    assert [(r["step"], r["segment"]) for r in kept] == [(1, 0), (2, 0), (3, 2), (4, 2)]


def test_effective_rows_keep_rows_without_step_and_order():
    rows = [{"event": "start"}, {"step": 0, "kind": "eval"}, {"step": 5}, {"event": "note", "segment": 1}]
    assert effective_rows(rows, [segment(0, 0), segment(1, 3)]) == [rows[0], rows[1], rows[3]]
    assert effective_rows(rows, []) == rows
    assert effective_rows([], [segment(0, 0)]) == []


def test_effective_rows_keep_the_resume_step_itself():
    rows = [{"step": 2}, {"step": 3}]
    assert effective_rows(rows, [segment(0, 0), segment(1, 2)]) == [{"step": 2}]


def test_read_metrics_and_events_use_the_manifest_segments(tmp_path):
    manifest = Manifest.create(tmp_path, {"train": {"steps": 4}}, [], METHOD)
    with JsonlWriter(tmp_path / "metrics.jsonl") as log:
        for step in (1, 2, 3):
            log.write({"step": step, "segment": 0})
    with JsonlWriter(tmp_path / "events.jsonl") as log:
        log.write({"step": 3, "event": "nonfinite", "segment": 0})
    manifest.begin_segment(tmp_path, "resume", from_step=2, recipe={"train": {"steps": 4}})
    with JsonlWriter(tmp_path / "metrics.jsonl") as log:
        for step in (3, 4):
            log.write({"step": step, "segment": 1})
    assert [(r["step"], r["segment"]) for r in read_metrics(tmp_path)] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    assert read_events(tmp_path) == []
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 5  # the raw file keeps everything


def test_read_metrics_of_a_run_without_manifest(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}) + "\n")
    assert read_metrics(tmp_path) == [{"step": 1}, {"step": 2}]
    assert read_events(tmp_path) == []
