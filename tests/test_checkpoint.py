"""Checkpoint and resume: a killed run continues bit-identically; torn checkpoints are skipped; clean stops."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from morl import Callback, Pipeline, TrainConfig
from morl.checkpoint import (
    MARKER,
    CheckpointError,
    Interrupted,
    find_checkpoint,
    latest_run,
    list_checkpoints,
)
from morl.cli import app
from morl.rewards import RewardError
from morl.run import Manifest, ResumeMismatch, read_jsonl, read_metrics
from morl.tinymath.task import make_split
from tests.small_runs import CHECKPOINTED_TRAIN

REPO = Path(__file__).resolve().parents[1]
KILL_ENV = "MORL_TEST_KILL_WHEN"


def kill_switch(prompts, completions, **kwargs):
    """A reward that SIGKILLs its own process once a given file exists (only when the test sets the variable).

    Rewards run after the rollout of a step, so the kill lands in the middle of the step after that checkpoint.
    """
    trigger = os.environ.get(KILL_ENV)
    if trigger and Path(trigger).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return [1.0 if len(c) < 5 else 0.0 for c in completions]


@pytest.fixture
def one_thread():
    """Training sets torch's (process-wide) thread count; give the rest of the suite its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _recipe(tmp_path: Path, model_dir: Path, out: Path, **train) -> Path:
    recipe = {
        "policy": {"model": str(model_dir)},
        "data": {"train": "tinymath", "eval": "tinymath", "train_size": 16, "eval_size": 3},
        "rewards": ["accuracy", "conciseness", "clarity", "tests.test_checkpoint.kill_switch"],
        "controller": {
            "name": "ctwa",
            "targets": [0.1, 0.1, 0.1, 0.1],
        },  # state in u_ and its EMA; needs a second forward pass
        "algo": {"name": "grpo", "kl_coef": 0.01, "minibatches": 2},  # a reference policy; shuffled mini-batches
        "rollout": {"name": "transformers", "max_new_tokens": 8},
        # a forecast window (steps 1 -> 3) spans the kill: its parameter snapshot must come back from the checkpoint
        "diagnostics": {"forecast_every": 2},
        "train": {
            "steps": 4,
            "prompts_per_step": 2,
            "group_size": 4,
            "eval_every": 2,
            "checkpoint_every": 1,
            "keep_checkpoints": 2,
            "threads": 1,
            "seed": 7,
            "progress": False,
            "output_dir": str(out),
            **train,
        },
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train_rows(run: Path) -> list[dict]:
    """The run's effective metric rows (a resumed run's superseded rows left out), without timings and segments."""
    return [
        {k: v for k, v in row.items() if not k.startswith(("timing/", "step_time")) and k != "segment"}
        for row in read_metrics(run)
    ]


def _final_state(run: Path) -> dict:
    state = json.loads((run / "training_state.json").read_text())
    return {k: v for k, v in state.items() if k not in ("segment", "identity")}  # identity names the output_dir


def test_sigkilled_run_resumes_bit_identical(tmp_path, tiny_model_dir, one_thread):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    recipe = _recipe(tmp_path, tiny_model_dir, killed)
    env = {**os.environ, KILL_ENV: str(killed / "checkpoints" / "step-000002" / MARKER), "PYTHONHASHSEED": "123"}
    proc = subprocess.run(
        [sys.executable, "-m", "morl", "fit", str(recipe)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    complete, _ = list_checkpoints(killed)
    assert [p.name for p in complete] == ["step-000001", "step-000002"]  # killed during step 3
    assert not (killed / "model").exists()

    runner = CliRunner()
    resumed = runner.invoke(app, ["fit", str(recipe), "--resume", "latest"])  # latest: the recipe's output_dir
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "at step 2 from step-000002" in " ".join(resumed.output.split())
    uninterrupted = runner.invoke(app, ["fit", str(_recipe(tmp_path, tiny_model_dir, clean))])
    assert uninterrupted.exit_code == 0, uninterrupted.output

    # bit-identical on CPU with one thread: every parameter and every logged number but the timings
    a, b = load_file(killed / "model" / "model.safetensors"), load_file(clean / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(a[k], initial[k]) for k in a)  # it trained: the comparison is not vacuous
    rows_a, rows_b = _train_rows(killed), _train_rows(clean)
    assert [(r["kind"], r["step"]) for r in rows_a] == [(r["kind"], r["step"]) for r in rows_b]
    assert rows_a == rows_b
    assert any("forecast/change/accuracy" in r for r in rows_a if r["step"] == 3)  # measured after the resume
    assert _final_state(killed) == _final_state(clean)
    segments = Manifest.load(killed).segments
    assert [(s.kind, s.from_step, s.to_step, s.status) for s in segments] == [
        ("start", 0, None, "interrupted"),  # SIGKILL: nobody closed it; the resume marked it
        ("resume", 2, 4, "finished"),
    ]
    assert [p.name for p in list_checkpoints(killed)[0]] == ["step-000003", "step-000004"]  # keep_checkpoints: 2


def _pipeline(policy, out: Path, algo="grpo", **train) -> Pipeline:
    config = TrainConfig(
        **{
            **CHECKPOINTED_TRAIN,
            "output_dir": str(out),
            **train,
        }
    )
    return Pipeline(
        policy=policy,
        rewards=["conciseness", "clarity"],
        controller={"name": "ctwa", "targets": [0.1, 0.1]},
        algo=algo,
        rollout={"name": "transformers", "max_new_tokens": 4},
        config=config,
    )


def test_checkpoint_layout_and_pruning(tiny_policy, tmp_path):
    pipe = _pipeline(tiny_policy, tmp_path / "run", keep_checkpoints=2)
    pipe.fit(make_split("train", 8, 0))
    complete, torn = list_checkpoints(tmp_path / "run")
    assert [p.name for p in complete] == ["step-000002", "step-000003"] and torn == []
    newest = complete[-1]
    for name in ("model/config.json", "model/model.safetensors", "optimizer.pt", "rng.pt", MARKER):
        assert (newest / name).is_file(), name
    trainer = json.loads((newest / "training_state.json").read_text())
    assert trainer["step"] == 3 and trainer["data_position"] == 6
    assert trainer["parts"]["controller"]["class"] == "morl.controllers.ctwa.CTWA"
    assert set(trainer["parts"]["controller"]["state"]) >= {"u_", "cov_ema_"}
    assert trainer["parts"]["reward/conciseness"]["state"]["count_"] == 12
    assert trainer["identity"]["classes"]["reward/clarity"] == "morl.rewards.clarity.Clarity"
    assert trainer["reference"] is None  # GRPO without KL needs no reference
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


def test_torn_checkpoints_are_skipped(tiny_policy, tmp_path, capsys):
    run = tmp_path / "run"
    _pipeline(tiny_policy, run).fit(make_split("train", 8, 0))
    ckpts = run / "checkpoints"
    (ckpts / "step-000003" / MARKER).unlink()  # killed before the marker: torn
    (ckpts / ".tmp-step-000004-abc").mkdir()  # killed mid-write: a leftover temporary directory
    (ckpts / ".tmp-step-000004-abc" / "optimizer.pt").write_bytes(b"partial")
    capsys.readouterr()
    assert find_checkpoint(run) == ckpts / "step-000002"
    out = capsys.readouterr().out
    assert "skipping torn checkpoint" in out and "step-000003" in out and ".tmp-step-000004" in out
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "step": 3, "loss": 0.')  # a row torn by the kill

    resumed = _pipeline(tiny_policy, tmp_path / "ignored", steps=4)
    result = resumed.fit(make_split("train", 8, 0), resume_from=run)
    assert result.run_dir_ == run and resumed.step_count == 4
    assert not (ckpts / ".tmp-step-000004-abc").exists()
    assert [r["step"] for r in _train_rows(run)] == [1, 2, 3, 4]  # no duplicate, no torn row
    assert [r["step"] for r in result.history_] == [1, 2, 3, 4]
    # append-only: the superseded step-3 row of the first segment and the torn fragment are still in the file
    assert [(r["step"], r["segment"]) for r in read_jsonl(run / "metrics.jsonl")] == [
        (1, 0),
        (2, 0),
        (3, 0),
        (3, 1),
        (4, 1),
    ]


def test_resuming_an_older_checkpoint_keeps_the_abandoned_later_ones_aside(tiny_policy, tmp_path, capsys):
    run = tmp_path / "run"
    _pipeline(tiny_policy, run).fit(make_split("train", 8, 0))
    capsys.readouterr()
    again = _pipeline(tiny_policy, run, steps=2)
    again.fit(make_split("train", 8, 0), resume_from=run / "checkpoints" / "step-000001")
    assert "step-000002, step-000003 moved to" in " ".join(capsys.readouterr().out.split())
    assert [p.name for p in list_checkpoints(run)[0]] == ["step-000001", "step-000002"]
    shelved = sorted(p.name for p in (run / "checkpoints" / "abandoned").glob("*/step-*"))
    assert shelved == ["step-000002", "step-000003"]  # nothing the first timeline wrote is deleted
    assert [r["step"] for r in _train_rows(run)] == [1, 2]
    assert len(read_jsonl(run / "metrics.jsonl")) == 3 + 1  # every row ever written: 1, 2, 3, then the new 2


def test_resume_errors_are_clear(tiny_policy, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        find_checkpoint(tmp_path / "empty")
    run = tmp_path / "run"
    _pipeline(tiny_policy, run, steps=1).fit(make_split("train", 4, 0))
    other = Pipeline(
        policy=tiny_policy,
        rewards=["conciseness"],
        controller={"name": "ctwa", "targets": [0.1]},
        rollout={"name": "transformers", "max_new_tokens": 4},
        config=TrainConfig(steps=2, group_size=2, prompts_per_step=2, progress=False),
    )
    with pytest.raises(ResumeMismatch, match=r"rewards\.1") as info:
        other.fit(make_split("train", 4, 0), resume_from=run)
    assert "reward/clarity" in str(info.value)  # the class behind every objective is compared too


def test_resume_checks_the_reference_policy(tiny_policy, _tiny_policy_master, tmp_path):
    from morl.policy import Policy

    run = tmp_path / "run"
    first = _pipeline(tiny_policy, run, algo={"name": "grpo", "kl_coef": 0.1}, steps=1)
    first.fit(make_split("train", 4, 0))
    pointer = json.loads((run / "checkpoints" / "step-000001" / "training_state.json").read_text())["reference"]
    assert pointer["model"] == _tiny_policy_master.config.model and "copy" not in pointer  # a path, not a copy

    other_model = copy.deepcopy(_tiny_policy_master.model)
    with torch.no_grad():
        next(other_model.parameters()).add_(0.01)  # another initial model: its reference is not the run's
    drifted = Policy(other_model, tiny_policy.tokenizer, tiny_policy.config)
    second = _pipeline(drifted, tmp_path / "x", algo={"name": "grpo", "kl_coef": 0.1}, steps=2)
    with pytest.raises(CheckpointError, match="reference policy"):
        second.fit(make_split("train", 4, 0), resume_from=run)


class _SendSignal(Callback):
    def __init__(self, at: int, signum: int) -> None:
        self.at, self.signum = at, signum

    def on_step_end(self, ctx):
        if ctx.step == self.at:
            os.kill(os.getpid(), self.signum)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="needs POSIX signals")
def test_sigterm_finishes_the_step_checkpoints_and_stops(tiny_policy, tmp_path):
    run = tmp_path / "run"
    pipe = _pipeline(tiny_policy, run, steps=5, checkpoint_every=0)
    pipe.set_params(callbacks=[_SendSignal(at=2, signum=signal.SIGTERM)])
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        pipe.fit(make_split("train", 8, 0))
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    assert info.value.step == 2 and info.value.signum == signal.SIGTERM
    assert info.value.checkpoint == run / "checkpoints" / "step-000002"
    assert (info.value.checkpoint / MARKER).is_file() and not (run / "model").exists()
    resumed = _pipeline(tiny_policy, run, steps=5, checkpoint_every=0)
    resumed.fit(make_split("train", 8, 0), resume_from=run)
    assert resumed.step_count == 5 and [r["step"] for r in _train_rows(run)] == [1, 2, 3, 4, 5]


def test_cli_resume_of_a_missing_run_fails_before_loading_a_model(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("policy: {model: /no/such/model}\ntrain: {steps: 1}\n")
    result = CliRunner().invoke(app, ["fit", str(recipe), "--resume", str(tmp_path / "gone")])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())


def test_latest_run_is_the_most_recently_active(tmp_path):
    old, new = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    for run, when in ((old, 1_000), (new, 2_000)):
        run.mkdir(parents=True)
        (run / "recipe.yaml").write_text("{}")
        (run / "metrics.jsonl").write_text("")
        for f in run.iterdir():
            os.utime(f, (when, when))
    (tmp_path / "runs" / "not-a-run").mkdir()
    assert latest_run(tmp_path / "runs") == new
    with pytest.raises(CheckpointError, match="no run directories"):
        latest_run(tmp_path / "nothing")


_CALLS = {"n": 0, "interrupt_at": 0}


def ctrl_c(prompts, completions, **kwargs):
    """A reward that presses Ctrl-C (SIGINT to its own process) on its n-th call."""
    _CALLS["n"] += 1
    if _CALLS["n"] == _CALLS["interrupt_at"]:
        os.kill(os.getpid(), signal.SIGINT)
    return [0.0] * len(completions)


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_cli_ctrl_c_checkpoints_and_exits_130(tmp_path, tiny_model_dir, one_thread):
    run = tmp_path / "run"
    recipe = {
        "policy": {"model": str(tiny_model_dir)},
        "data": {"train_size": 8, "eval": None},
        "rewards": ["conciseness", "tests.test_checkpoint.ctrl_c"],
        "rollout": {"name": "transformers", "max_new_tokens": 4},
        "train": {"steps": 6, "prompts_per_step": 2, "group_size": 2, "progress": False, "output_dir": str(run)},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    _CALLS.update(n=0, interrupt_at=2)
    result = CliRunner().invoke(app, ["fit", str(path)])
    assert result.exit_code == 128 + signal.SIGINT, result.output
    text = " ".join(result.output.split())
    assert "stopped by SIGINT at step 2" in text and f"--resume {run}" in text
    assert [p.name for p in list_checkpoints(run)[0]] == ["step-000002"]


def test_checkpoint_folders_follow_the_umask_not_0700(tiny_policy, tmp_path):
    previous = os.umask(0o022)
    try:
        _pipeline(tiny_policy, tmp_path / "run", steps=1).fit(make_split("train", 4, 0))
    finally:
        os.umask(previous)
    newest = list_checkpoints(tmp_path / "run")[0][-1]
    assert newest.stat().st_mode & 0o777 == 0o755  # mkdtemp alone would give 0o700


def failing_reward(prompts, completions, **kwargs):
    raise RuntimeError("the grader is down")


def test_reward_failure_streaks_survive_a_resume(tiny_policy, tmp_path, one_thread):
    """A reward that fails on every sample stops the run after ``max_failed_reward_steps`` steps in a row; a resume
    in the middle of the streak continues the count (it lives in the training state), not from 0."""
    run = tmp_path / "run"

    def pipeline(steps: int) -> Pipeline:
        config = TrainConfig(
            steps=steps,
            prompts_per_step=2,
            group_size=2,
            eval_every=0,
            progress=False,
            output_dir=str(run),
            on_reward_error="skip",
            max_failed_reward_steps=3,
            checkpoint_every=1,
        )
        rollout = {"name": "transformers", "max_new_tokens": 4}
        return Pipeline(policy=tiny_policy, rewards=["clarity", failing_reward], rollout=rollout, config=config)

    train = make_split("train", 16, 0)
    first = pipeline(2).fit(train)
    state = json.loads((run / "training_state.json").read_text())
    assert state["reward_failure_streaks"] == {"clarity": 0, "failing_reward": 2}
    assert first.step_count == 2
    with pytest.raises(RewardError, match="failing_reward.*3 steps in a row"):
        pipeline(10).fit(train, resume_from=run)  # the third failing step in a row: one more, not three
    assert find_checkpoint(run).name == "step-000002"
