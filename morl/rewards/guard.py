"""Time limits on reward calls: a reward that blocks costs its batch's scores, never the run.

Two ways to run a call, chosen per reward (:func:`isolated`):

- **in-process, under a watchdog thread** (the default). The call runs in a helper thread while the caller waits
  at most ``timeout_s``. A call past its limit raises :class:`RewardTimeout`; the helper thread cannot be killed
  (no Python thread can), so it is abandoned as a daemon and the reward counts as *busy*: until that call returns,
  further calls time out at once instead of piling up threads on the same object. Learned state stays where it
  lives, in this process, so stateful rewards (``RewardFn`` with ``*_`` attributes) and TRL reward functions that
  keep state in a closure work unchanged; what an abandoned call learns after its limit is undone (``undo``) the
  next time the reward is called. Cost: a queue hand-off to the reward's own thread and a C timer armed around the
  call (a fraction of a millisecond).
  Limit: C code that holds the GIL for its whole run (a regex that backtracks forever, ``9**9**9``) stalls the
  waiting thread too, and no thread can stop it. For that the call is also watched by ``faulthandler``'s timer, a
  C thread that needs no GIL: if the waiting thread has not come back :data:`ESCALATE_AFTER_S` seconds after the
  limit, the timer writes where every thread was and ends the process (exit code 1), after a message that names
  the reward and says to run it in a worker process. The timer is process-wide: while a watched call runs it
  replaces any ``faulthandler.dump_traceback_later`` timer set by someone else, and cancels it afterwards.
  ``os._exit()`` in such a reward ends this process: only a worker process can survive it.
- **in a worker process** (``isolate = True`` on the reward, or ``isolation="process"``). A child forked on first
  use holds the reward functions and runs the calls; a call past its limit kills the child (``SIGKILL``), which
  is forked again for the next call. It stops anything, C code included, but the reward's closure state lives and
  dies in the child, and it must not need a GPU initialised in the parent. Arguments and results are pickled. The
  child dies with the process that forked it (Linux; also after a ``SIGKILL``, so a killed run leaves no worker
  behind) and closes its copy of the run directory's lock; a child that dies in a call (``os._exit``, a crash) is
  a failing call, named with its exit status.

Either way a reward cannot end the run by raising: ``SystemExit`` (``sys.exit()``), ``KeyboardInterrupt`` and
the other exceptions that are not ``Exception`` become :class:`RewardExited`, a failing call like any other. A
real Ctrl-C still stops the run: the signal interrupts the waiting thread, not the reward. (A call with no time
limit runs in the caller's thread, where a ``KeyboardInterrupt`` may be the user's, so it passes as it is.)

Processes a reward starts and leaves running (a ``fork()`` that never exits keeps the command's output open, so
``morl fit ... | tee log`` would never end) are adopted by the command and killed when it exits
(:func:`stop_leftovers_at_exit`, Linux).
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import itertools
import multiprocessing
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Literal

from morl import processes

#: Seconds a reward call may take when nothing else says (``train.reward_timeout_s``, a reward's ``call_timeout_s``).
DEFAULT_TIMEOUT_S = 60.0

Isolation = Literal["thread", "process"]


class RewardTimeout(Exception):
    """A reward did not answer within its time limit (or is still busy with an earlier call that did not)."""


class RemoteRewardError(Exception):
    """A reward raised in the worker process an exception that could not be sent back as itself, or the worker died."""


class RewardExited(Exception):
    """A reward raised ``SystemExit``, ``KeyboardInterrupt`` or another exception meant to end the process.

    A reward cannot end the run: the call counts as failing, like one that raised ``ValueError``."""


def _as_failure(err: BaseException) -> Exception:
    """What a reward raised, as an ``Exception`` the caller handles."""
    if isinstance(err, Exception):
        return err
    detail = f"({', '.join(map(repr, err.args))})" if err.args else ""
    return RewardExited(f"{type(err).__name__}{detail}: a reward may not stop the process")


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
    name: str | None = None,
) -> Any:
    """``reward(**kwargs)`` within ``timeout_s`` seconds (``None``: no limit, called directly).

    Raises :class:`RewardTimeout` past the limit, and whatever the reward raised otherwise (:class:`RewardExited`
    for what would end the process). ``undo`` (in-process calls only) is kept with a call that times out and run
    once that call has returned, to drop what it learned late. ``name`` (default: the function's) is the reward's
    in the message of a call that holds the GIL past its limit.
    """
    if timeout_s is None:
        try:
            return reward(**kwargs)
        except (Exception, KeyboardInterrupt):  # a KeyboardInterrupt in the caller's thread may be the user's Ctrl-C
            raise
        except BaseException as err:
            raise _as_failure(err) from err
    if isolate:
        return _worker().call(reward, kwargs, timeout_s)
    name = name or getattr(reward, "__name__", type(reward).__name__)
    return _call_in_thread(reward, kwargs, timeout_s, undo, name)


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
    reward: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float, undo: Callable[[], None] | None, name: str
) -> Any:
    import torch

    reply: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    with _ESCALATION.watching(name, timeout_s):  # armed before the reward can take the GIL
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
        if isinstance(payload, Exception):
            raise payload
        raise _as_failure(payload) from payload
    return payload


#: Seconds past its time limit that an in-process call may keep the waiting thread from running (by holding the
#: GIL) before the process is ended.
ESCALATE_AFTER_S = 5.0

# Run by ``python -I -S -c``: forwards faulthandler's traceback to stderr, after the last header it was given.
# Input: header records ``\0<text>\n`` while calls are watched, then, if the timer fires, the traceback.
_RELAY_SOURCE = r"""# morl: the relay of a reward's GIL watchdog (morl.rewards.guard)
import os
header, held = b"", b""
while True:
    data = os.read(0, 65536)
    if not data:
        raise SystemExit
    held += data
    while held.startswith(b"\0") and b"\n" in held:
        record, _, held = held.partition(b"\n")
        header = record[1:]
    if held and not held.startswith(b"\0"):
        break
os.write(2, header + b"\n")
while held:
    os.write(2, held)
    held = os.read(0, 65536)
"""


class _Escalation:
    """faulthandler's timer, armed while an in-process call is waited on: the one watchdog that needs no GIL.

    When a watched call holds the GIL, the waiting thread cannot even raise :class:`RewardTimeout`. The timer, a C
    thread, then ends the process :data:`ESCALATE_AFTER_S` after the limit (exit code 1), writing where each
    thread was. It writes through a relay, a small process started on first use that puts a message naming the
    reward before the traceback; without the relay the traceback goes to stderr as it is. With several calls
    watched at once (from several threads) the timer waits for the latest deadline.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, tuple[float, str]] = {}  # per watched call: its deadline and its header
        self._keys = itertools.count()
        self._relay: subprocess.Popen[bytes] | None = None
        self._told = ""  # the header the relay holds
        self._started = False  # whether this process started a relay
        self._pid = os.getpid()

    @contextlib.contextmanager
    def watching(self, name: str, limit_s: float) -> Iterator[None]:
        header = (
            f"error: reward {name!r} kept every other thread of this process from running for "
            f"{ESCALATE_AFTER_S:g} s past its time limit ({limit_s:g} s): C code that holds the GIL (a huge integer "
            "power, a regular expression that backtracks forever) cannot be stopped in this process, so the "
            "process ends. Run the reward in a worker process, which is killed at the limit instead: "
            "train.reward_isolation: process (morl fit), or isolate = True on the reward. Where each thread was:"
        )
        with self._lock:
            key = next(self._keys)
            self._calls[key] = (time.monotonic() + limit_s + ESCALATE_AFTER_S, header)
            self._arm()
        try:
            yield
        finally:
            with self._lock:
                del self._calls[key]
                self._arm()

    def close(self) -> None:
        """Stop the relay (at exit: so that it is not counted as a process left behind)."""
        with self._lock:
            relay, self._relay, self._told = self._relay, None, ""
            if relay is not None and self._pid == os.getpid():
                relay.kill()
                relay.wait()

    def _arm(self) -> None:
        if not self._calls:
            faulthandler.cancel_dump_traceback_later()
            return
        deadline, header = max(self._calls.values())
        out: Any = self._relay_told(header)
        if out is None:
            out = sys.stderr if _has_fileno(sys.stderr) else 2
        faulthandler.dump_traceback_later(max(deadline - time.monotonic(), 0.001), exit=True, file=out)

    def _relay_told(self, header: str) -> Any:
        """The relay's input, once it holds ``header``; None when there is no relay."""
        if self._pid != os.getpid():  # a forked copy of this process: the relay is the parent's
            self._relay, self._told, self._started, self._pid = None, "", False, os.getpid()
        if self._relay is None:
            if self._started:  # one relay per process: one that died is not started again
                return None
            self._started = True
            try:
                self._relay = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _RELAY_SOURCE],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                )
            except (OSError, ValueError):
                return None
        stdin = self._relay.stdin
        assert stdin is not None
        if header != self._told:
            try:
                os.write(stdin.fileno(), b"\0" + header.replace("\n", " ").encode(errors="replace") + b"\n")
            except OSError:  # the relay died: the traceback goes to stderr
                self._relay = None
                return None
            self._told = header
        return stdin


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


_ESCALATION = _Escalation()


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
            except (EOFError, OSError):
                raise RemoteRewardError(f"the reward worker process died ({self._exit_status()})") from None
            finally:
                if not done:  # timed out, died, or a signal stopped the wait: nothing may be left running
                    self.close()
        if kind == "ok":
            return payload
        if isinstance(payload, Exception):
            raise payload
        if isinstance(payload, BaseException):
            raise _as_failure(payload) from payload
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

    def _exit_status(self) -> str:
        """How the worker ended, once it has (a reward that called ``os._exit(7)``: "exit code 7")."""
        proc = self._proc
        if proc is None:
            return "it is gone"
        proc.join(1)
        code = proc.exitcode
        if code is None:
            return "its pipe closed"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"signal {-code}"
        return f"exit code {code}"

    def _start(self) -> None:
        if self._pid != os.getpid():  # a forked copy of the parent: the parent's child is not ours
            self._proc, self._conn, self._pid = None, None, os.getpid()
        self.close()
        context = multiprocessing.get_context("fork")
        parent, child = context.Pipe()
        # a child forked by another thread would die with that thread: it relies on the pipe closing instead
        by_main = threading.current_thread() is threading.main_thread()
        proc = context.Process(
            target=_serve,
            args=(child, parent, self._rewards, os.getpid() if by_main else None),
            name="morl-reward-worker",
            daemon=True,
        )
        proc.start()
        child.close()
        self._proc, self._conn, self._knows = proc, parent, set(self._rewards)


def _serve(conn: Any, parent_end: Any, rewards: dict[int, Callable[..., Any]], parent_pid: int | None) -> None:
    """The worker's loop: one ``(key, kwargs)`` in, one ``("ok", values)`` or ``("error", exception)`` out."""
    # the parent decides when a run stops; a Ctrl-C sent to the process group must not kill a call half-way
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # nothing of the parent's may outlive it here: the copy of its pipe end (or recv never sees it go), the run
    # directory's lock, and the worker itself, killed with the parent even in the middle of a call
    parent_end.close()
    if parent_pid is not None:
        processes.die_with_parent(parent_pid)
    processes.drop_inherited_locks()
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


# ---- processes rewards leave behind ----------------------------------------------------------------------------


def stop_leftovers_at_exit() -> None:
    """For a command that runs rewards (``morl fit``, ``eval``, ``score``): kill, when this process exits, the processes
    rewards started and left running, and say so with their pids (Linux; elsewhere nothing happens).

    This process becomes the subreaper of its descendants, so a reward's grandchild whose parent has exited is
    still found. Nothing is killed during the run; at exit, after every other exit handler registered later
    (loggers, the reward worker, the accuracy checker) has stopped its own processes, what is still running is
    left behind: it would keep the command's output open (``morl fit ... | tee log`` would never end).
    """
    global _REAPER
    with _WORKER_LOCK:
        if _REAPER != os.getpid() and processes.adopt_orphans():
            atexit.register(_stop_leftovers)
            _REAPER = os.getpid()


_REAPER: int | None = None  # the process that stops its leftovers at exit (not a forked copy of it)


def _stop_leftovers() -> None:
    if _REAPER != os.getpid():
        return
    if _WORKER is not None:
        _WORKER.close()
    _ESCALATION.close()
    services = processes.multiprocessing_services()
    left = [pid for pid in processes.descendants() if pid not in services]
    commands = {pid: processes.command(pid)[:80] for pid in left}
    killed = processes.stop(left) if left else []  # the worker's own helpers end when their input closes
    if killed:
        named = ", ".join(f"{pid} ({commands.get(pid, '?')})" for pid in killed)
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(
                f"morl: killed {len(killed)} process(es) still running at exit (pids {named}): "
                "a reward started them and did not end them\n"
            )
            sys.stderr.flush()
