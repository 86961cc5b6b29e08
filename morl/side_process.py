"""A second process that computes completion log-probs under a copy of the policy's parameters, so that a
teacher-forced pass runs on a spare CPU core while this process samples.

Why a process: CTWA's after-update pass (one no-grad forward of the batch under the updated policy) is about a sixth
of a TinyMath step on one thread, and the next rollout does not need its result, only the next weighting does. A
thread cannot run beside the decoding loop (both hold Python's interpreter lock most of the time: a thread hid 40–50%
of the pass); a process hid 65–89% of it (``benchmarks/overlap.py``: the two cores contend for the rest).

The helper holds its own copy of the model in shared memory; :meth:`LogprobProcess.submit` copies the policy's
current parameters into it (a memory copy of the model's size), writes the batch's token tensors to a pipe as bytes
and returns; :meth:`LogprobProcess.result` waits for the log-probs. The policy's own tensors are never shared or
touched, so what the rest of training holds (the optimizer's parameters, the decoder's views of them) is unaffected,
and the helper reads a snapshot that no update can change under it. The log-probs are the same function on the same
numbers as in this process (:func:`morl.policy.batch_logprobs`) on as many threads as this process used when the
helper started, so they are equal bit for bit.

The helper is a fork of this process (spawned where there is no fork, which imports torch and transformers first:
seconds); until it is ready :meth:`submit` returns False and the caller computes in-process. A helper that fails or
dies is closed and reported once; the caller again computes in-process.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import signal
import traceback
import warnings
from typing import Any

import torch

from morl import processes
from morl.batch import Batch
from morl.policy import Policy, batch_logprobs

__all__ = ["LogprobProcess"]

_READY = "ready"


def _serve(model: torch.nn.Module, tokenizer: Any, config: Any, threads: int, parent_pid: int, conn: Any) -> None:
    """The helper's loop: one job in, its log-probs (or the error's text) out; ``None`` ends it."""
    # the parent decides when a run stops (a Ctrl-C to the process group must not end a pass half-way), the helper
    # dies with it, and keeps none of its locks (the run directory's)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    processes.die_with_parent(parent_pid)
    processes.drop_inherited_locks()
    try:
        torch.set_num_threads(threads)
        policy = Policy(model, tokenizer, config)
        conn.send((_READY, None))
        while (job := conn.recv()) is not None:
            batch, temperature, micro_batch_size = _unpack_job(job)
            with torch.no_grad():
                conn.send(("ok", _pack(batch_logprobs(policy, batch, temperature, micro_batch_size))))
    except EOFError:  # the parent closed its end
        pass
    except Exception:  # reported to the parent, which computes in-process from then on
        conn.send(("error", traceback.format_exc()))


# Tensors cross the pipe as plain bytes, pickled and written by the caller's own thread. A queue would hand them to
# torch's sharing instead: storage moved into shared memory on the queue's feeder thread, its file descriptor served
# by another thread of this process, both competing with the decoding loop for the interpreter lock (and the feeder
# moved tensors that training was still reading).
Packed = tuple[str, tuple[int, ...], bytes]


def _pack(tensor: torch.Tensor) -> Packed:
    flat = tensor.detach().contiguous().view(-1)
    return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), flat.view(torch.uint8).numpy().tobytes()


def _unpack(packed: Packed) -> torch.Tensor:
    dtype, shape, data = packed
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return raw.view(getattr(torch, dtype)).reshape(shape)


def _pack_job(batch: Batch, temperature: float, micro_batch_size: int | None) -> dict[str, Any]:
    """What the forward pass reads of a batch."""
    tensors = {name: _pack(getattr(batch, name)) for name in ("input_ids", "attention_mask", "completion_mask")}
    return {
        **tensors,
        "group_size": batch.group_size,
        "prompt_width": batch.prompt_width,
        "temperature": temperature,
        "micro_batch_size": micro_batch_size,
    }


def _unpack_job(job: dict[str, Any]) -> tuple[Batch, float, int | None]:
    tensors = {name: _unpack(job[name]) for name in ("input_ids", "attention_mask", "completion_mask")}
    n = tensors["input_ids"].shape[0]
    batch = Batch(
        prompts=[""] * n,
        completions=[""] * n,
        columns={},
        group_size=job["group_size"],
        prompt_width=job["prompt_width"],
        **tensors,
    )
    return batch, job["temperature"], job["micro_batch_size"]


class LogprobProcess:
    """Completion log-probs of a batch in a helper process, on a snapshot of the policy's current parameters."""

    def __init__(self, policy: Policy) -> None:
        self._model = policy.model  # its tensors are read at each submit: one replaced since is seen
        mirror = copy.deepcopy(policy.model)
        mirror.share_memory()
        self._mirror = list(mirror.state_dict().values())
        # fork: the helper is up at once (a spawned one imports torch and transformers first, ~10 s here); the
        # parameters it reads live in shared memory, which a fork keeps shared
        methods = multiprocessing.get_all_start_methods()
        context = torch.multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(
                mirror,
                policy.tokenizer,
                policy.config,
                torch.get_num_threads(),
                os.getpid(),
                child,
            ),
            daemon=True,
            name="morl-logprobs",
        )
        self._process.start()
        child.close()  # the helper's end: closed here, so a helper that dies reads as the end of the pipe
        self._ready = False
        self._busy = False
        self.failure: str | None = None
        self.served = 0  # passes the helper computed

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self.failure is None and self._process.is_alive()

    def ready(self, wait_s: float = 0.0) -> bool:
        """Whether the helper has started, waiting up to ``wait_s`` for it; False for good once it failed."""
        if self.failure is None and not self._process.is_alive():
            self._fail(f"the helper process exited (code {self._process.exitcode})")
        if not self._ready and self.alive:
            message = self._receive(wait_s)
            if message is None:
                return False
            kind, detail = message
            if kind != _READY:
                self._fail(detail)
                return False
            self._ready = True
        return self._ready and self.alive

    def submit(self, batch: Batch, temperature: float, micro_batch_size: int | None) -> bool:
        """Start the pass on the policy's current parameters; False (nothing started) when the helper is not ready
        or is already busy, so the caller computes in-process."""
        if self._busy or not self.ready():
            return False
        source = list(self._model.state_dict().values())
        if [t.shape for t in source] != [t.shape for t in self._mirror]:
            self._fail("the policy's parameters changed shape since the helper started")
            return False
        torch._foreach_copy_(self._mirror, source)
        try:
            self._conn.send(_pack_job(batch, temperature, micro_batch_size))
        except OSError as err:  # the helper is gone
            self._fail(f"the helper process exited ({err})")
            return False
        self._busy = True
        return True

    def result(self) -> torch.Tensor | None:
        """The submitted pass's log-probs ``[N, L]``, waiting for them; None if the helper failed (the caller
        computes in-process)."""
        if not self._busy:
            raise RuntimeError("result() without a submitted pass")
        while (message := self._receive(1.0)) is None:  # an interrupt here leaves the pass submitted: a second
            if self.failure is not None or not self._process.is_alive():  # call waits for it again
                self._busy = False
                self._fail(f"the helper process exited (code {self._process.exitcode})")
                return None
        self._busy = False
        kind, detail = message
        if kind != "ok":
            self._fail(detail)
            return None
        self.served += 1
        return _unpack(detail)

    def close(self) -> None:
        """End the helper (waits a moment for it, then stops it)."""
        if self._process.is_alive():
            try:
                self._conn.send(None)
            except (OSError, ValueError):
                pass
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._conn.close()

    def _receive(self, wait_s: float) -> tuple[str, Any] | None:
        """The helper's next message, waiting up to ``wait_s``; None if there is none yet, or the helper is gone."""
        try:
            return self._conn.recv() if self._conn.poll(wait_s) else None
        except (EOFError, OSError):  # the helper died: its end of the pipe closed
            self._fail(f"the helper process exited (code {self._process.exitcode})")
            return None

    def _fail(self, detail: str) -> None:
        if self.failure is None:
            self.failure = detail
            warnings.warn(
                f"morl's log-prob helper process stopped; the pass runs in this process from now on: {detail}",
                RuntimeWarning,
                stacklevel=3,
            )
        if self._process.is_alive():
            self._process.kill()
