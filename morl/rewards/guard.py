"""Time limits on reward calls: a reward that blocks costs its batch's scores, never the run.

Two ways to run a call, chosen per reward (:func:`isolated`):

- **in-process, under a watchdog thread** (the default). The call runs in a helper thread while the caller waits
  at most ``timeout_s``. A call past its limit raises :class:`RewardTimeout`; the helper thread cannot be killed
  (no Python thread can), so it is abandoned as a daemon and the reward counts as *busy*: until that call returns,
  further calls time out at once instead of piling up threads on the same object. Learned state stays where it
  lives, in this process, so stateful rewards (``RewardFn`` with ``*_`` attributes) and TRL reward functions that
  keep state in a closure work unchanged; what an abandoned call learns after its limit is undone (``undo``) the
  next time the reward is called. Cost: a queue hand-off to the reward's own thread (tens of microseconds).
  Limit: C code that holds the GIL for its whole run (a regex that backtracks forever, ``9**9**9``) stalls the
  waiting thread too.
- **in a worker process** (``isolate = True`` on the reward, or ``isolation="process"``). A child forked on first
  use holds the reward functions and runs the calls; a call past its limit kills the child (``SIGKILL``), which
  is forked again for the next call. It stops anything, C code included, but the reward's closure state lives and
  dies in the child, and it must not need a GPU initialised in the parent. Arguments and results are pickled.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from typing import Any, Literal

#: Seconds a reward call may take when nothing else says (``train.reward_timeout_s``, a reward's ``call_timeout_s``).
DEFAULT_TIMEOUT_S = 60.0

Isolation = Literal["thread", "process"]


class RewardTimeout(Exception):
    """A reward did not answer within its time limit (or is still busy with an earlier call that did not)."""


class RemoteRewardError(Exception):
    """A reward raised in the worker process an exception that could not be sent back as itself."""


def call_limit(reward: Any, default: float | None) -> float | None:
    """The time limit of one call to ``reward``: its own ``call_timeout_s`` (config field or attribute), else
    ``default``; ``None`` or ``0``: no limit. Lets a slow reward model ask for more than a rule-based reward needs."""
    config = getattr(reward, "config", None)
    own = getattr(config, "call_timeout_s", None)
    if own is None:
        own = getattr(reward, "call_timeout_s", None)
    limit = default if own is None else own
    return float(limit) if limit else None


def isolated(reward: Any, isolation: Isolation = "thread") -> bool:
    """Whether ``reward`` runs in the worker process: its ``isolate`` attribute wins, else ``isolation``.

    ``RewardFn`` declares ``isolate = False``: its learned state must stay in this process (checkpoints carry it).
    """
    own = getattr(reward, "isolate", None)
    return bool(own) if own is not None else isolation == "process"


def guarded_call(
    reward: Callable[..., Any],
    kwargs: dict[str, Any],
    timeout_s: float | None,
    *,
    isolate: bool = False,
    undo: Callable[[], None] | None = None,
) -> Any:
    """``reward(**kwargs)`` within ``timeout_s`` seconds (``None``: no limit, called directly).

    Raises :class:`RewardTimeout` past the limit, and whatever the reward raised otherwise. ``undo`` (in-process
    calls only) is kept with a call that times out and run once that call has returned, to drop what it learned
    late.
    """
    if timeout_s is None:
        return reward(**kwargs)
    if isolate:
        return _worker().call(reward, kwargs, timeout_s)
    return _call_in_thread(reward, kwargs, timeout_s, undo)


# ---- in-process, under a watchdog ------------------------------------------------------------------------------


class _Runner:
    """A daemon thread that runs one reward's calls in turn, so a call costs a queue hand-off, not a thread start."""

    def __init__(self, reward: Callable[..., Any]) -> None:
        self.reward = reward  # a strong reference: its id keys this runner and must not be reused
        self.inbox: queue.SimpleQueue[tuple[dict[str, Any], bool, queue.SimpleQueue[tuple[str, Any]]]] = (
            queue.SimpleQueue()
        )
        self.late: tuple[queue.SimpleQueue[tuple[str, Any]], Callable[[], None] | None] | None = None
        name = getattr(reward, "__name__", type(reward).__name__)
        threading.Thread(target=self._loop, name=f"morl-reward-{name}", daemon=True).start()

    def _loop(self) -> None:
        import torch

        while True:
            try:
                kwargs, grad, reply = self.inbox.get(timeout=_IDLE_S)
            except queue.Empty:  # unused for a while: let the thread and the reward go (a later call makes another)
                with _RUNNERS_LOCK:  # callers hand over work under this lock, so none can be waiting here
                    if self.inbox.empty() and self.late is None:
                        if _RUNNERS.get(id(self.reward)) is self:
                            del _RUNNERS[id(self.reward)]
                        return
                continue
            try:
                with torch.set_grad_enabled(grad):  # grad mode is per thread: the caller's (no_grad in eval) holds
                    reply.put(("ok", self.reward(**kwargs)))
            except BaseException as err:  # handed to the caller, who decides
                reply.put(("error", err))
            del kwargs, reply


#: Seconds a reward's thread waits for work before it ends.
_IDLE_S = 300.0
_RUNNERS: dict[int, _Runner] = {}
_RUNNERS_LOCK = threading.Lock()


def _call_in_thread(
    reward: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float, undo: Callable[[], None] | None
) -> Any:
    import torch

    reply: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(id(reward))
        if runner is None or runner.reward is not reward:
            runner = _RUNNERS[id(reward)] = _Runner(reward)
        if runner.late is not None:
            late_reply, late_undo = runner.late
            if late_reply.empty():
                raise RewardTimeout("still running an earlier call that went past its time limit")
            runner.late = None
            if late_undo is not None:
                late_undo()  # the abandoned call returned after all: forget what it learned after its limit
        runner.inbox.put((kwargs, torch.is_grad_enabled(), reply))
    try:
        kind, payload = reply.get(timeout=timeout_s)
    except queue.Empty:
        runner.late = (reply, undo)
        raise RewardTimeout(f"no answer within {timeout_s:g} s") from None
    except BaseException:  # a signal stopped the wait: the call goes on, later calls must not queue behind it
        runner.late = (reply, undo)
        raise
    if kind == "error":
        raise payload
    return payload


# ---- in a worker process ---------------------------------------------------------------------------------------


class _Worker:
    """One forked child that runs isolated reward calls; killed on a timeout and forked again on the next call.

    Forked, not spawned: the rewards (closures, notebook functions) need not be importable, the child inherits
    them. A reward unknown to the running child (made after it was forked) makes the next call fork a new one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rewards: dict[int, Callable[..., Any]] = {}  # strong references: an id is never reused while here
        self._proc: Any = None
        self._conn: Any = None
        self._knows: set[int] = set()
        self._pid = os.getpid()

    def call(self, reward: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float) -> Any:
        with self._lock:
            key = id(reward)
            self._rewards[key] = reward
            if self._pid != os.getpid() or self._proc is None or not self._proc.is_alive() or key not in self._knows:
                self._start()
            done = False
            try:
                self._conn.send((key, kwargs))
                if not self._conn.poll(timeout_s):
                    raise RewardTimeout(f"no answer within {timeout_s:g} s (worker process killed)")
                kind, payload = self._conn.recv()
                done = True
            except (EOFError, OSError, BrokenPipeError) as err:
                raise RemoteRewardError(f"the reward worker process died ({type(err).__name__})") from None
            finally:
                if not done:  # timed out, died, or a signal stopped the wait: nothing may be left running
                    self.close()
        if kind == "ok":
            return payload
        if isinstance(payload, BaseException):
            raise payload
        raise RemoteRewardError(payload)

    def close(self) -> None:
        proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        if proc is not None and self._pid == os.getpid():
            if proc.is_alive():
                proc.kill()
            proc.join(5)

    def _start(self) -> None:
        if self._pid != os.getpid():  # a forked copy of the parent: the parent's child is not ours
            self._proc, self._conn, self._pid = None, None, os.getpid()
        self.close()
        context = multiprocessing.get_context("fork")
        parent, child = context.Pipe()
        proc = context.Process(target=_serve, args=(child, self._rewards), name="morl-reward-worker", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn, self._knows = proc, parent, set(self._rewards)


def _serve(conn: Any, rewards: dict[int, Callable[..., Any]]) -> None:
    """The worker's loop: one ``(key, kwargs)`` in, one ``("ok", values)`` or ``("error", exception)`` out."""
    # the parent decides when a run stops; a Ctrl-C sent to the process group must not kill a call half-way
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            key, kwargs = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or exited
            return
        try:
            reply: tuple[str, Any] = ("ok", rewards[key](**kwargs))
        except BaseException as err:
            err.add_note("in the reward worker process:\n" + "".join(traceback.format_exception(err)).rstrip())
            reply = ("error", err)
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            what = "its result" if reply[0] == "ok" else f"its {type(reply[1]).__name__}: {reply[1]}"
            conn.send(("error", f"the reward's answer cannot be sent back ({what}; {type(err).__name__}: {err})"))


_WORKER: _Worker | None = None
_WORKER_LOCK = threading.Lock()


def _worker() -> _Worker:
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = _Worker()
            atexit.register(_WORKER.close)
        return _WORKER
