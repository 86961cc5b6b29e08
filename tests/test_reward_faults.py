"""Rewards that misbehave at the process level: hold the GIL, exit, fork, or outlive a killed run.

Each case runs ``morl`` in a process of its own (in a new session, so that whatever it leaves running is killed
after the test), bounds its wall time, and says what a user would see: the exit code and the message.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from morl.rewards import RewardError, score_rewards
from morl.rewards.guard import ESCALATE_AFTER_S
from morl.run import RunLock
from tests.small_runs import REWARD_RECIPE

REPO_ROOT = Path(__file__).resolve().parents[1]

# A reward module beside the recipe. Each reward leaves a file saying where it got to, named after the reward.
REWARDS_MODULE = """
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def hog(completions, **kwargs):
    (HERE / "hog").touch()
    return [float(9**9**9 > 0)] * len(completions)  # C code that holds the GIL for hours


def quits(completions, **kwargs):
    sys.exit(3)


def interrupts(completions, **kwargs):
    raise KeyboardInterrupt


def stuck(completions, trainer_state=None, **kwargs):
    if trainer_state is not None and trainer_state.global_step >= 1 and not (HERE / "release").exists():
        (HERE / "stuck").write_text(str(os.getpid()))
        time.sleep(3600)
    return [float(len(c)) for c in completions]


def forks(completions, **kwargs):
    if not (HERE / "child").exists():
        child = os.fork()
        if child == 0:  # a child that never ends
            time.sleep(3600)
            os._exit(0)
        (HERE / "child").write_text(str(child))
        middle = os.fork()
        if middle == 0:  # and a grandchild whose parent exits: an orphan
            orphan = os.fork()
            if orphan == 0:
                time.sleep(3600)
                os._exit(0)
            (HERE / "orphan").write_text(str(orphan))
            os._exit(0)
        os.waitpid(middle, 0)
    return [1.0] * len(completions)
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A scratch folder with the reward module, named after the test (a module one test imported stays imported)."""
    (tmp_path / f"{_module(tmp_path)}.py").write_text(REWARDS_MODULE)
    yield tmp_path
    for name in ("child", "orphan"):  # a test that failed may leave them running
        if (tmp_path / name).exists():
            _kill(int((tmp_path / name).read_text()))


def _module(tmp_path: Path) -> str:
    return f"fault_rewards_{tmp_path.name.replace('-', '_')}"


def _recipe(workdir: Path, model: Path, reward: str, steps: int = 1, extra: str = "") -> Path:
    recipe = workdir / "recipe.yaml"
    text = REWARD_RECIPE.format(model=model, reward=f"{_module(workdir)}.{reward}", steps=steps, extra=extra)
    recipe.write_text(text)
    return recipe


def _rows(workdir: Path) -> Path:
    rows = workdir / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": "1+1?", "completion": c}) + "\n" for c in ("2", "two")))
    return rows


class _Morl:
    """``python -m morl ARGS`` in its own session, its output (stdout and stderr) read to the end meanwhile."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "morl", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        self.lines.extend(self.proc.stdout)  # until every process that holds the output has closed it

    @property
    def output(self) -> str:
        return " ".join("".join(self.lines).split())

    def wait_for(self, path: Path, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output
            time.sleep(0.1)

    def finish(self, timeout_s: float) -> int:
        """The exit code, once the process has ended and its output is closed, within ``timeout_s``."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout_s} s: {self.output}")
        self.reader.join(timeout=10)
        assert not self.reader.is_alive(), f"the process ended, its output is still open: {self.output}"
        return code

    def __enter__(self) -> _Morl:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of the session
        except OSError:
            pass
        self.proc.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _flocks(pid: int) -> list[str]:
    """The ``flock`` locks a process holds through its file descriptors."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                found += [line for line in fh if line.startswith("lock:") and "FLOCK" in line]
        except OSError:
            continue
    return found


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")


# ---- a reward that holds the GIL -------------------------------------------------------------------------------


def test_a_reward_holding_the_gil_ends_morl_score_past_its_limit_with_a_message(workdir):
    args = ["score", str(_rows(workdir)), "--rewards", f"{_module(workdir)}.hog", "--reward-timeout-s", "0.5"]
    with _Morl(args, workdir) as morl:
        morl.wait_for(workdir / "hog")
        started = time.monotonic()
        code = morl.finish(timeout_s=ESCALATE_AFTER_S + 30)
        assert time.monotonic() - started < ESCALATE_AFTER_S + 15
    assert code == 1, morl.output
    assert "reward 'hog' kept every other thread of this process from running" in morl.output
    assert "train.reward_isolation: process" in morl.output and "isolate = True" in morl.output
    assert "Timeout" in morl.output and "in hog" in morl.output  # where it was: faulthandler's traceback


@linux_only
def test_a_second_sigterm_ends_a_fit_whose_reward_holds_the_gil(workdir, tiny_model_dir):
    recipe = _recipe(workdir, tiny_model_dir, "hog", extra="reward_timeout_s: 600")
    with _Morl(["fit", str(recipe), "--output-dir", str(workdir / "run")], workdir) as morl:
        morl.wait_for(workdir / "hog")
        time.sleep(0.3)  # inside 9**9**9
        morl.proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert morl.proc.poll() is None  # the first signal asks for the end of the step
        morl.proc.send_signal(signal.SIGTERM)
        code = morl.finish(timeout_s=10)
    assert code == -signal.SIGTERM, morl.output


def test_a_slow_reward_that_lets_the_gil_go_still_just_times_out():
    def slow(completions: list[Any], **kwargs: Any) -> list[float]:
        time.sleep(ESCALATE_AFTER_S + 1)  # past its limit and past the escalation: the process must live on
        return [1.0] * len(completions)

    timeouts: dict[str, int] = {}
    matrix, _ = score_rewards([slow], ["p"], ["a"], {}, training=False, timeout_s=0.2, timeouts=timeouts)
    assert math.isnan(matrix[0, 0].item()) and timeouts == {"slow": 1}
    time.sleep(ESCALATE_AFTER_S + 1)  # still here after the escalation's deadline (it was cancelled)


# ---- a reward worker outlives a killed run ---------------------------------------------------------------------


@linux_only
def test_a_sigkilled_fit_leaves_no_reward_worker_and_resumes(workdir, tiny_model_dir):
    extra = "reward_isolation: process, reward_timeout_s: 600, checkpoint_every: 1"
    recipe = _recipe(workdir, tiny_model_dir, "stuck", steps=2, extra=extra)
    run = workdir / "run"
    with _Morl(["fit", str(recipe), "--output-dir", str(run)], workdir) as morl:
        morl.wait_for(workdir / "stuck")  # step 1 done, step 2 inside the reward, in the worker
        worker = int((workdir / "stuck").read_text())
        assert worker != morl.proc.pid and _alive(worker)
        assert not _flocks(worker)  # the worker's copy of the run's lock is closed
        morl.proc.kill()
        morl.proc.wait()
        deadline = time.monotonic() + 5
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker), "the reward worker outlived the run"
    with RunLock(run):  # nothing holds the run's lock
        pass
    (workdir / "release").touch()
    with _Morl(["fit", str(recipe), "--resume", str(run)], workdir) as resumed:
        assert resumed.finish(timeout_s=120) == 0, resumed.output
    assert "step-000002" in resumed.output or (run / "checkpoints" / "step-000002").is_dir()


# ---- a reward that forks ---------------------------------------------------------------------------------------


@linux_only
@pytest.mark.parametrize("command", ["score", "fit"])
def test_processes_a_reward_leaves_running_are_killed_when_the_command_ends(command, workdir, tiny_model_dir):
    if command == "score":
        args = ["score", str(_rows(workdir)), "--rewards", f"{_module(workdir)}.forks"]
    else:
        args = ["fit", str(_recipe(workdir, tiny_model_dir, "forks")), "--output-dir", str(workdir / "run")]
    with _Morl(args, workdir) as morl:
        code = morl.finish(timeout_s=120)  # its output closes: nothing left holds it
        child, orphan = (int((workdir / name).read_text()) for name in ("child", "orphan"))
        assert code == 0, morl.output
        assert not _alive(child) and not _alive(orphan)
        assert "killed 2 process(es) still running at exit" in morl.output, morl.output
        assert str(child) in morl.output and str(orphan) in morl.output


# ---- a reward that exits -------------------------------------------------------------------------------------


def _exits(completions: list[Any], **kwargs: Any) -> list[float]:
    sys.exit(3)


def _interrupts(completions: list[Any], **kwargs: Any) -> list[float]:
    raise KeyboardInterrupt


def _dies(completions: list[Any], **kwargs: Any) -> list[float]:
    os._exit(7)


@pytest.mark.parametrize("isolation", ["thread", "process"])
@pytest.mark.parametrize(("reward", "raised"), [(_exits, "SystemExit(3)"), (_interrupts, "KeyboardInterrupt")])
def test_a_reward_that_exits_or_interrupts_fails_like_one_that_raises(isolation, reward, raised):
    def score(on_error: str) -> Any:
        try:
            return score_rewards(
                [reward],
                ["p1", "p2"],
                ["a", "b"],
                {},
                training=False,
                timeout_s=30,
                isolation=isolation,
                on_error=on_error,
            )
        except (SystemExit, KeyboardInterrupt) as err:  # would end the test session: fail this test only
            pytest.fail(f"the reward's {type(err).__name__} went through")

    with pytest.raises(RewardError) as caught:
        score("raise")
    message = str(caught.value)
    assert message.startswith(f"reward '{reward.__name__}' raised RewardExited: {raised}"), message
    assert "prompt: 'p1'" in message and "completion: 'a'" in message
    matrix, skipped = score("skip")
    assert all(math.isnan(v) for v in matrix[:, 0].tolist()) and skipped == {reward.__name__: 2}


def test_a_reward_whose_worker_process_exits_fails_with_its_exit_code():
    with pytest.raises(RewardError, match=r"reward '_dies' raised RemoteRewardError: .*died \(exit code 7\)"):
        score_rewards([_dies], ["p"], ["a"], {}, training=False, timeout_s=30, isolation="process")


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_ctrl_c_still_stops_a_reward_call(isolation):
    def sleeps(completions: list[Any], **kwargs: Any) -> list[float]:
        time.sleep(30)
        return [1.0] * len(completions)

    # Python's own Ctrl-C handler, as in a terminal: a runner started in the background inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            score_rewards([sleeps], ["p"], ["a"], {}, training=False, timeout_s=20, isolation=isolation)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("reward", ["quits", "interrupts"])
def test_morl_score_reports_a_reward_that_exits(reward, workdir):
    args = ["score", str(_rows(workdir)), "--rewards", f"{_module(workdir)}.{reward}"]
    with _Morl(args, workdir) as morl:
        code = morl.finish(timeout_s=120)
    assert code == 1, morl.output
    assert f"reward '{reward}' failed on 2 row(s)" in morl.output and "RewardExited" in morl.output
