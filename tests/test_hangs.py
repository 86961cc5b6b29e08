"""Nothing hangs: a reward that blocks costs its samples, a run that keeps failing stops, signals stop a run in time.

The rewards here sleep for good; every test bounds its own wall time, so a regression fails instead of hanging.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from morl.checkpoint import GracefulStop, list_checkpoints
from morl.cli import app
from morl.components import ComponentConfig
from morl.rewards import RewardFn, score_rewards
from morl.rewards.guard import _worker
from tests.small_runs import REWARD_RECIPE

REPO_ROOT = Path(__file__).resolve().parents[1]

# a reward module beside the recipe: ``forever`` never answers; ``stuck`` answers for the first step, then sleeps for
# good (and says so with a file) unless a file named ``release`` sits beside it
REWARDS_MODULE = """
import time
from pathlib import Path

HERE = Path(__file__).parent


def forever(completions, **kwargs):
    time.sleep(3600)


def stuck(completions, trainer_state=None, **kwargs):
    if trainer_state is not None and trainer_state.global_step >= 1 and not (HERE / "release").exists():
        (HERE / "hanging").touch()
        while True:
            time.sleep(1)
    return [float(len(c)) for c in completions]
"""


def forever(completions: list[Any], **kwargs: Any) -> list[float]:
    time.sleep(3600)
    return []


def fast(completions: list[Any], **kwargs: Any) -> list[float]:
    return [float(len(c)) for c in completions]


class Counting(RewardFn):
    """A stateful reward that learns how many completions it saw, and sleeps through one batch of a given size."""

    name = ""

    class Config(ComponentConfig):
        sleep_on: int = 0

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        if len(completions) == self.config.sleep_on:
            time.sleep(3600)
        self.seen_ = getattr(self, "seen_", 0) + len(completions)
        return [1.0] * len(completions)


def _write_run_files(tmp_path: Path, model: Path, reward: str, steps: int, extra: str) -> Path:
    """The recipe and its reward module, named after the test: a module imported by another test stays imported."""
    module = f"hang_rewards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(REWARDS_MODULE)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(REWARD_RECIPE.format(model=model, reward=f"{module}.{reward}", steps=steps, extra=extra))
    return recipe


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_reward_that_sleeps_forever_is_not_applicable_and_counted(isolation):
    prompts, completions = ["p"] * 4, ["a", "bb", "ccc", "dddd"]
    started = time.monotonic()
    timeouts: dict[str, int] = {}
    matrix, skipped = score_rewards(
        [fast, forever], prompts, completions, {}, training=True, timeout_s=0.3, isolation=isolation, timeouts=timeouts
    )
    assert time.monotonic() - started < 5
    assert matrix[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert all(math.isnan(v) for v in matrix[:, 1].tolist())
    assert timeouts == {"fast": 0, "forever": 4} and skipped == {"fast": 0, "forever": 0}
    # again: in-process, the reward is still busy and times out at once; isolated, its worker was killed
    started = time.monotonic()
    score_rewards([forever], prompts, completions, {}, training=False, timeout_s=0.3, isolation=isolation)
    assert time.monotonic() - started < (0.2 if isolation == "thread" else 5)
    if isolation == "process":
        assert _worker()._proc is None  # killed at the limit, not left running


def test_a_stateful_reward_keeps_its_state_in_this_process_and_learns_nothing_from_a_timed_out_call():
    reward = Counting(sleep_on=3)
    score_rewards([reward], ["p"] * 2, ["a", "b"], {}, training=True, timeout_s=5, isolation="process")
    assert reward.seen_ == 2  # RewardFn runs here, whatever the isolation: its learned state lives here
    timeouts: dict[str, int] = {}
    matrix, _ = score_rewards([reward], ["p"] * 3, ["a", "b", "c"], {}, training=True, timeout_s=0.2, timeouts=timeouts)
    assert timeouts == {"counting": 3} and all(math.isnan(v) for v in matrix[:, 0].tolist())
    assert reward.seen_ == 2


def test_a_reward_sets_its_own_time_limit():
    def slow(completions: list[Any], **kwargs: Any) -> list[float]:
        time.sleep(0.3)
        return [1.0] * len(completions)

    slow.call_timeout_s = 0.05  # type: ignore[attr-defined]
    matrix, _ = score_rewards([slow], ["p"], ["a"], {}, training=False, timeout_s=60)
    assert math.isnan(matrix[0, 0].item())
    slow.call_timeout_s = 5  # type: ignore[attr-defined]
    time.sleep(0.4)  # the abandoned call ends
    matrix, _ = score_rewards([slow], ["p"], ["a"], {}, training=False, timeout_s=0.01)
    assert matrix[0, 0].item() == 1.0


def test_graceful_stop_waits_for_the_step_then_stops_at_once_after_the_grace_period():
    stop = GracefulStop(grace_s=0.3)
    started = time.monotonic()
    with stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # the first signal only asks
        time.sleep(10)  # a step that takes too long: the grace period ends it
    assert 0.25 < time.monotonic() - started < 5 and stop.stopped_at_once
    # a stop at once waits for an update under way, then comes
    stop = GracefulStop()
    with stop:
        os.kill(os.getpid(), signal.SIGINT)
        stop.hold()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # nothing raised while holding
        with pytest.raises(KeyboardInterrupt):
            stop.release()


def test_fit_stops_after_steps_of_total_reward_failure_with_a_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = "reward_timeout_s: 0.3, max_failed_reward_steps: 2, checkpoint_every: 0"
    recipe = _write_run_files(tmp_path, tiny_model_dir, "forever", steps=5, extra=extra)
    run = tmp_path / "run"
    started = time.monotonic()
    result = CliRunner().invoke(app, ["fit", str(recipe), "--output-dir", str(run)])
    assert time.monotonic() - started < 20
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert "reward 'forever' timed out or failed on every sample for 2 steps in a row" in message
    assert "last good checkpoint" in message
    complete, _ = list_checkpoints(run)
    assert [p.name for p in complete] == ["step-000001"]  # the second step stopped before its update
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["rewards/forever/timeouts"] == 4.0


def test_sigterm_twice_stops_a_fit_stuck_in_a_reward_and_the_run_resumes(tiny_model_dir, tmp_path):
    recipe = _write_run_files(tmp_path, tiny_model_dir, "stuck", steps=2, extra="reward_timeout_s: 600")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "morl", "fit", str(recipe), "--output-dir", str(run)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "hanging").exists():  # step 1 done, step 2 inside the reward for good
            assert proc.poll() is None and time.monotonic() < deadline, "".join(output)
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # the first signal waits for the step
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        assert time.monotonic() - sent < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    text = " ".join("".join(output).split())
    assert code == 128 + signal.SIGTERM, text
    assert "stopped by SIGTERM at step 1" in text and f"--resume {run}" in text
    complete, torn = list_checkpoints(run)
    assert [p.name for p in complete] == ["step-000001"] and not torn
    manifest = json.loads((run / "manifest.json").read_text())
    assert json.dumps(manifest).count('"interrupted"') == 1

    (tmp_path / "release").touch()
    os.chdir(tmp_path)
    try:
        resumed = CliRunner().invoke(app, ["fit", str(recipe), "--resume", str(run)])
    finally:
        os.chdir(REPO_ROOT)
    assert resumed.exit_code == 0, resumed.output
    assert [p.name for p in list_checkpoints(run)[0]][-1] == "step-000002"


def test_morl_score_with_a_hanging_reward_finishes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hang_rewards.py").write_text(REWARDS_MODULE)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": "1+1?", "completion": c}) + "\n" for c in ("2", "two")))
    out = tmp_path / "scored.jsonl"
    started = time.monotonic()
    result = CliRunner().invoke(
        app,
        [
            "score",
            str(rows),
            "--rewards",
            "conciseness,hang_rewards.forever",
            "--reward-timeout-s",
            "0.3",
            "--out",
            str(out),
        ],
    )
    assert time.monotonic() - started < 10
    assert result.exit_code == 0, result.output
    scored = [json.loads(line)["rewards"] for line in out.read_text().splitlines()]
    assert [r["forever"] for r in scored] == [None, None]
    assert [r["conciseness"] for r in scored] == [1.0, 0.0]
    table_row = next(line for line in result.output.splitlines() if line.startswith("│ forever"))
    cells = [cell.strip() for cell in table_row.strip().strip("│").split("│")]
    assert cells[0] == "forever" and cells[-1] == "2"  # timed out
