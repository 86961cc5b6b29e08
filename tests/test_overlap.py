"""CTWA's after-update pass beside the next rollout: the same weights as without it, its metrics one row later, every
way out (a checkpoint, a stop inside a step, the end of a fit) keeping the pass with the step it belongs to."""

from __future__ import annotations

import math

import pytest
import torch

from morl.overlap import overlap_reason
from morl.run import read_metrics
from morl.tinymath.task import make_split

CTWA = {"name": "ctwa", "targets": 1.0, "lr": 1.0}  # every covariance below target: the weights move each step
START_S = 120  # the helper imports torch and transformers: seconds on an idle machine, more under a parallel suite


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the helper takes this process's count: the same roundings as the inline pass
    yield
    torch.set_num_threads(threads)


def _steps(pipe, data, count):
    torch.manual_seed(0)
    return [pipe.step(pipe.next_examples(data))[1] for _ in range(count)]


def _controller_state(pipe):
    controller = pipe.trainer_.parts.controller
    return controller.u_.tolist(), controller.cov_ema_.tolist()


def test_the_helper_moves_the_weights_as_the_inline_pass_does_one_row_later(tiny_pipeline, one_thread):
    data = make_split("train", 40, 0)
    inline = _steps(tiny_pipeline(controller=CTWA, train={"overlap_after_update": False}), data, 4)
    pipe = tiny_pipeline(controller=CTWA, train={"overlap_after_update": True})
    with pipe.trainer_.overlapped_after_update() as overlap:
        assert overlap.process.ready(wait_s=START_S), overlap.process.failure
        rows = _steps(pipe, data, 4)
        assert overlap.process.served == 3  # steps 1-3's passes, each settled in the next step
    assert overlap.process.served == 4  # the last one on the way out
    names = [k for k in inline[0] if k.startswith("weights/")]
    assert [[r[k] for k in names] for r in rows] == [[r[k] for k in names] for r in inline]
    assert len({tuple(r[k] for k in names) for r in rows}) == 4  # the weights did move
    cov = "ctwa/cov/accuracy"
    assert math.isnan(rows[0][cov]) and [r[cov] for r in rows[1:]] == [r[cov] for r in inline[:-1]]
    for key in ("cov/clipped_weight/accuracy", "clip/token_fraction"):  # the diagnostics' too, from the same record
        assert key not in rows[0] and [r[key] for r in rows[1:]] == [r[key] for r in inline[:-1]]


def test_a_fit_keeps_the_pass_with_its_step_through_checkpoints_and_the_end(tiny_pipeline, one_thread, tmp_path):
    data = make_split("train", 40, 0)
    runs = {}
    for overlap in (False, True):
        train = {
            "steps": 4,
            "checkpoint_every": 2,
            "overlap_after_update": overlap,
            "output_dir": str(tmp_path / str(overlap)),
        }
        pipe = tiny_pipeline(controller=CTWA, train=train)
        pipe.fit(data)
        runs[overlap] = (pipe, [r for r in read_metrics(pipe.run_dir_) if r.get("kind") == "train"])
    (inline, inline_rows), (overlapped, rows) = runs[False], runs[True]
    assert _controller_state(overlapped) == _controller_state(inline)  # the last update's pass was applied
    assert [r["weights/accuracy"] for r in rows] == [r["weights/accuracy"] for r in inline_rows]
    cov = "ctwa/cov/clarity"
    assert [r[cov] for r in rows[1:]] == [r[cov] for r in inline_rows[:-1]]  # the checkpoint at 2 changed nothing


def test_a_stop_inside_a_step_puts_its_parts_back_with_the_last_pass_applied(tiny_pipeline, one_thread):
    data = make_split("train", 40, 0)
    inline = tiny_pipeline(controller=CTWA, train={"overlap_after_update": False})
    _steps(inline, data, 1)
    pipe = tiny_pipeline(controller=CTWA, train={"overlap_after_update": True})
    with pipe.trainer_.overlapped_after_update():
        _steps(pipe, data, 1)
        rollout = pipe.parts_.rollout
        generate = rollout.generate

        def stopped(*args, **kwargs):
            generate(*args, **kwargs)
            raise KeyboardInterrupt  # a stop at once, during the next rollout (the pass is pending)

        rollout.generate = stopped
        with pytest.raises(KeyboardInterrupt):
            pipe.step(pipe.next_examples(data))
        pipe.trainer_.undo_unfinished_step()
        assert _controller_state(pipe) == _controller_state(inline)


def _reason(setting, pipe):
    trainer = pipe.trainer_
    return overlap_reason(setting, trainer.parts.controller, trainer.callbacks, trainer.parts.policy)


def test_why_the_pass_stays_inline(tiny_pipeline):
    fixed = tiny_pipeline(train={"overlap_after_update": "auto"})
    assert "no after-update pass" in _reason("auto", fixed)
    ctwa = tiny_pipeline(controller=CTWA)
    assert _reason(False, ctwa) == "train.overlap_after_update is false"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert _reason("auto", ctwa) is None  # this machine has a second core
        torch.set_num_threads(64)
        assert "no spare core" in _reason("auto", ctwa)
        assert _reason(True, ctwa) is None  # true: wherever it can run
    finally:
        torch.set_num_threads(threads)
    diagnosed = tiny_pipeline(controller=CTWA, diagnostics={"clipped_weights": True})
    assert "callback" in _reason("auto", diagnosed)


def test_true_where_it_cannot_run_names_the_field(tiny_pipeline):
    pipe = tiny_pipeline(controller=CTWA, diagnostics={"clipped_weights": True}, train={"overlap_after_update": True})
    with pytest.raises(ValueError, match="train.overlap_after_update=true cannot run here: a callback"):
        with pipe.trainer_.overlapped_after_update():
            pass


def test_a_resumed_fit_with_the_overlap_logs_and_learns_as_an_uninterrupted_one(tiny_pipeline, one_thread, tmp_path):
    data = make_split("train", 40, 0)
    whole = tiny_pipeline(
        controller=CTWA, train={"overlap_after_update": True, "steps": 4, "output_dir": str(tmp_path / "whole")}
    )
    whole.fit(data)
    first = tiny_pipeline(
        controller=CTWA, train={"overlap_after_update": True, "steps": 2, "output_dir": str(tmp_path / "split")}
    )
    first.fit(data)
    second = tiny_pipeline(
        controller=CTWA, train={"overlap_after_update": True, "steps": 4, "output_dir": str(tmp_path / "split")}
    )
    second.fit(data, resume_from=str(tmp_path / "split"))
    assert _controller_state(second) == _controller_state(whole)
    rows = {name: [r for r in read_metrics(tmp_path / name) if r.get("kind") == "train"] for name in ("whole", "split")}
    keys = ["weights/accuracy", "ctwa/cov/accuracy", "ctwa/u/clarity"]
    assert [[r[k] for k in keys] for r in rows["split"]] == [[r[k] for k in keys] for r in rows["whole"]]
