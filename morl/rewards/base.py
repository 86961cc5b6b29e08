"""The reward contract: one objective, one float (or ``None``) per completion.

A reward is anything TRL's ``GRPOTrainer`` could call: ``f(**arguments) -> list[float | None]``, every argument
passed **by keyword**, so a TRL reward function (``def format_reward(completions, **kwargs)``) works unchanged.
:class:`RewardFn` adds a validated config and saved state for rewards that need them. ``None`` means "not
applicable" and is left out of that objective's statistics. The arguments, one entry per completion unless said:

- ``prompts``, ``completions``: text. For conversational data (rows with chat ``messages``) plain functions get
  them as TRL does: each prompt is its list of ``{"role", "content"}`` messages and each completion is
  ``[{"role": "assistant", "content": text}]``. :class:`RewardFn` subclasses get text unless they set
  ``conversational = True``, so morl's built-in rules read the text whatever the data;
- ``completion_ids``: the completion's token ids, up to and including EOS (the rollout has them);
- ``trainer_state``: a :class:`StepInfo` (``global_step``, ``max_steps``, ``epoch``), where TRL passes its
  ``TrainerState``, in training and in the evaluations of a run. Both are left out, never faked, where the
  caller does not know them (``morl score`` on a file of finished completions);
- every dataset column (``answer``, ``solution``, ``messages``, ...);
- morl's own: ``completion_lengths`` (tokens per completion) and ``training`` (False for evaluation, so stateful
  rewards do not learn from eval batches).

A reward must swallow the arguments it does not read (``**kwargs``), as TRL requires too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from pydantic import Field

from morl.components import Component, ComponentConfig
from morl.rewards.guard import DEFAULT_TIMEOUT_S, Isolation, RewardTimeout, call_limit, guarded_call, isolated

RewardCallable = Callable[..., Sequence[float | None]]
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: Keyword arguments morl itself passes to every reward; a dataset column may not take one of these names.
RESERVED_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "completion_lengths", "training")


@dataclass(frozen=True)
class StepInfo:
    """Where training stands, passed to rewards as ``trainer_state`` (where TRL passes its ``TrainerState``).

    It carries the fields of ``transformers.TrainerState`` that reward schedules read, so a TRL reward that ramps
    a penalty with ``trainer_state.global_step / trainer_state.max_steps`` runs unchanged. Frozen: a reward reads
    the schedule, it never moves it.

    Example:
        >>> state = StepInfo(global_step=25, max_steps=100)
        >>> min(1.0, state.global_step / state.max_steps)
        0.25
    """

    global_step: int  # policy updates done before this batch (0 while scoring the first)
    max_steps: int = 0  # updates the run will make (0: unknown)
    epoch: float = 0.0  # passes over the training prompts so far, fractional


@runtime_checkable
class PlacedOnDevice(Protocol):
    """A reward that runs a model: the pipeline tells it the policy's device, so both share one accelerator."""

    def place(self, device: torch.device | str) -> None:
        """Use ``device`` unless the reward's own config names one."""


class RewardConfig(ComponentConfig):
    """Every built-in reward's settings start with this one: its own time limit per call."""

    call_timeout_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="seconds one call may take before its samples count as timed out; None: train.reward_timeout_s",
    )


class RewardFn(Component):
    """Base class for configurable or stateful rewards; subclasses implement ``__call__``.

    State rule — **don't mutate state before you can fail**: compute and check every value first, then update
    learned state (``count_ += ...``) as the last thing before returning, so that a call that raises leaves the
    state as it was. :func:`score_rewards` enforces this for ``RewardFn`` objects (it restores their learned state
    after a call that raised or whose output it rejected) but cannot for plain functions that keep state in a
    closure. When a batched call raises, each sample is retried alone with ``training=False`` (so nothing is
    learned twice), and under ``on_error="skip"`` the samples that passed are scored once more as one batch in
    training mode, so a stateful reward learns from each training batch exactly once.
    """

    family = "reward"
    Config = RewardConfig
    # True when a held-out value is relative to the training history (conciseness: below the running mean length),
    # so start and end values are not comparable; tables and reports show mean length for it instead
    moving_target: ClassVar[bool] = False
    # True: receives prompts and completions as message lists for chat data, as TRL passes them (a reward model
    # renders them with its chat template); False: always as text, which rule-based rewards read
    conversational: ClassVar[bool] = False
    # seconds one call may take before its samples are not applicable (None: train.reward_timeout_s); a Config
    # field of the same name wins, so a subclass can make it a recipe setting
    call_timeout_s: ClassVar[float | None] = None
    # False: called in this process under a watchdog thread, where its learned state lives; True (only for a reward
    # without learned state): called in a worker process that is killed when it runs past its limit
    isolate: ClassVar[bool] = False

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        raise NotImplementedError

    def required_columns(self) -> list[str]:
        """Dataset columns every row must have (checked before training, so a missing one fails at once)."""
        return []

    def counters(self) -> dict[str, float]:
        """Running counts to log as ``rewards/{name}/{counter}`` (e.g. answer-checker timeouts); default none."""
        return {}

    def objective_name(self) -> str:
        """The name the objective is logged under; the registry name unless the config says otherwise."""
        return self.name or type(self).__name__.lower()


class RewardError(RuntimeError):
    """A reward raised, returned a non-finite value, or the wrong number of values."""


def is_moving_target(reward: RewardCallable) -> bool:
    """Plain functions are not moving targets; :class:`RewardFn` subclasses say so with ``moving_target``."""
    return isinstance(reward, RewardFn) and reward.moving_target


def objective_name(reward: RewardCallable) -> str:
    """The name an objective is logged under: the registry name or the function's name."""
    if isinstance(reward, RewardFn):
        return reward.objective_name()
    return getattr(reward, "__name__", type(reward).__name__)


def check_columns(rewards: Sequence[RewardCallable], rows: list[dict[str, Any]], split: str = "train") -> None:
    """Raise :class:`morl.data.DataError` naming the first row without a column that a reward needs."""
    from morl.data import DataError

    for reward in rewards:
        needed = reward.required_columns() if isinstance(reward, RewardFn) else []
        for column in needed:
            for i, row in enumerate(rows):
                if column not in row:
                    raise DataError(
                        f"{split} row {i} has no {column!r} column, which reward {objective_name(reward)!r} needs; "
                        f"columns present: {sorted(row)}"
                    )


def completion_token_ids(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Each row's completion token ids where ``mask`` is set: the ``completion_ids`` TRL rewards read.

    Example:
        >>> completion_token_ids(torch.tensor([[5, 6, 2, 0], [7, 2, 0, 0]]), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]))
        [[5, 6, 2], [7, 2]]
    """
    return [row[keep.bool()].tolist() for row, keep in zip(ids.cpu(), mask.cpu())]


def score_rewards(
    rewards: Sequence[RewardCallable],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list[Any]],
    *,
    training: bool,
    completion_lengths: list[int] | None = None,
    completion_ids: list[list[int]] | None = None,
    trainer_state: Any | None = None,
    on_error: str = "raise",
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    isolation: Isolation = "thread",
    timeouts: dict[str, int] | None = None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Reward matrix ``[N, M]`` (NaN where not applicable) and per-objective counts of skipped samples.

    Each reward is called with keyword arguments only (the module docstring lists them): ``completion_ids``
    (see :func:`completion_token_ids`) and ``trainer_state`` are passed when given, left out when ``None``.

    ``on_error="raise"`` stops with the objective, prompt and completion in the message;
    ``on_error="skip"`` marks the offending sample not applicable for that objective and counts it.
    Offending: the reward raised on it (``sys.exit()`` and ``KeyboardInterrupt`` in a reward included: a reward
    cannot end the run), or returned a non-finite value or a non-number for it; a reward that returns the wrong
    number of values (or not a list) offends on every sample of the batch.

    Every call has a time limit (:mod:`morl.rewards.guard`): a reward's own ``call_timeout_s``, else ``timeout_s``
    (``None``: none). A batch call past it leaves the batch not applicable for that reward (NaN, whatever
    ``on_error`` says: a slow reward is not a wrong one) and adds its samples to ``timeouts[name]`` when a dict is
    given; the run goes on. ``isolation`` says where rewards without an ``isolate`` attribute of their own run:
    ``"thread"`` in this process under a watchdog, ``"process"`` in a worker process killed at the limit.

    Example:
        >>> def format_reward(completions, **kwargs):  # a TRL reward function, as written for GRPOTrainer
        ...     return [float(c[0]["content"].startswith("<think>")) for c in completions]
        >>> chat = [[{"role": "user", "content": "1+1?"}]] * 2
        >>> matrix, skipped = score_rewards([format_reward], ["1+1?"] * 2, ["<think>2</think>", "2"],
        ...                                 {"messages": chat}, training=False)
        >>> matrix[:, 0].tolist(), skipped
        ([1.0, 0.0], {'format_reward': 0})
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    n = len(completions)
    lengths = completion_lengths if completion_lengths is not None else [len(c) for c in completions]
    arguments = _Arguments.of(prompts, completions, columns, lengths, completion_ids, trainer_state)
    matrix = torch.full((n, len(rewards)), float("nan"), dtype=torch.float32)
    skipped: dict[str, int] = {}
    timed_out: dict[str, int] = timeouts if timeouts is not None else {}
    for m, reward in enumerate(rewards):
        name = objective_name(reward)
        skipped[name] = 0
        timed_out[name] = 0
        before = _learned_state(reward)
        call = _Guarded(reward, name, call_limit(reward, timeout_s), isolated(reward, isolation), timed_out)
        try:
            out = call(arguments.select(reward, None, training), before)
        except RewardTimeout as err:
            _restore(reward, before)
            call.timed_out(n, err)
            values = [None] * n
        except Exception as err:
            _restore(reward, before)
            values = _score_one_by_one(call, arguments, prompts, completions, training, err, on_error)
        else:
            values = _as_list(out)
            if values is None or len(values) != n:
                _restore(reward, before)  # its output is rejected, so is what it learned from the batch
                got = f"{len(values)} values" if values is not None else f"a {type(out).__name__}"
                if on_error == "raise":
                    raise RewardError(
                        f"reward {name!r} returned {got} for {n} completions (expected a list of {n}); "
                        f"first prompt: {_show(prompts[0]) if n else None}, "
                        f"first completion: {_show(completions[0]) if n else None}"
                    )
                values = [math.nan] * n
        for i, value in enumerate(values):
            if value is None:
                continue
            number = _as_float(value)
            if not abs(number) <= _FLOAT32_MAX:  # NaN, inf, or a float that would overflow the float32 matrix
                if on_error == "raise":
                    raise RewardError(
                        f"reward {name!r} returned {value!r} for sample {i} (a {type(value).__name__}; "
                        f"expected a finite float32 number or None)\n  prompt: {_show(prompts[i])}\n"
                        f"  completion: {_show(completions[i])}"
                    )
                skipped[name] += 1
                continue
            matrix[i, m] = number
    return matrix, skipped


@dataclass(frozen=True)
class _Arguments:
    """The keyword arguments of one batch: per-completion lists in both shapes, and what every call shares."""

    text: dict[str, list[Any]]  # prompts and completions as text
    chat: dict[str, list[Any]] | None  # as message lists, when every row has chat ``messages``
    rows: dict[str, list[Any]]  # dataset columns, completion_lengths, completion_ids
    shared: dict[str, Any]  # trainer_state

    @classmethod
    def of(
        cls,
        prompts: list[str],
        completions: list[str],
        columns: dict[str, list[Any]],
        lengths: list[int],
        completion_ids: list[list[int]] | None,
        trainer_state: Any | None,
    ) -> _Arguments:
        taken = sorted(set(columns) & set(RESERVED_ARGUMENTS))
        if taken:
            raise ValueError(
                f"dataset column {taken[0]!r} has the name of an argument morl passes to every reward "
                f"({', '.join(RESERVED_ARGUMENTS)}); rename the column"
            )
        n = len(completions)
        per_row = {"prompts": prompts, "completion_lengths": lengths, "completion_ids": completion_ids, **columns}
        for key, values in per_row.items():
            if values is not None and len(values) != n:
                raise ValueError(f"{len(values)} values in {key!r} for {n} completions")
        rows = {**columns, "completion_lengths": list(lengths)}
        if completion_ids is not None:
            rows["completion_ids"] = [list(ids) for ids in completion_ids]
        messages = columns.get("messages")
        chat = None
        if n and messages is not None and all(_is_conversation(m) for m in messages):
            chat = {
                "prompts": list(messages),
                "completions": [[{"role": "assistant", "content": c}] for c in completions],
            }
        shared = {} if trainer_state is None else {"trainer_state": trainer_state}
        return cls({"prompts": list(prompts), "completions": list(completions)}, chat, rows, shared)

    def select(self, reward: RewardCallable, rows: list[int] | None, training: bool) -> dict[str, Any]:
        """The keyword arguments for ``reward`` on ``rows`` (None: all), in the shape it reads."""
        wants_chat = not isinstance(reward, RewardFn) or reward.conversational
        per_row = {**(self.chat if self.chat is not None and wants_chat else self.text), **self.rows}
        if rows is not None:
            per_row = {key: [values[i] for i in rows] for key, values in per_row.items()}
        return {**per_row, **self.shared, "training": training}


def _is_conversation(value: Any) -> bool:
    """A non-empty list of ``{"role", "content"}`` messages (how TRL recognises a conversational prompt)."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


class _Guarded:
    """One reward's calls under its time limit, counting the samples of the calls that ran past it."""

    def __init__(
        self, reward: RewardCallable, name: str, limit: float | None, isolate: bool, timeouts: dict[str, int]
    ) -> None:
        self.reward, self.name, self.limit, self.isolate, self.timeouts = reward, name, limit, isolate, timeouts

    def __call__(self, kwargs: dict[str, Any], before: dict[str, Any] | None) -> Any:
        reward = self.reward
        undo = None if before is None else (lambda: _restore(reward, before))
        return guarded_call(reward, kwargs, self.limit, isolate=self.isolate, undo=undo, name=self.name)

    def timed_out(self, samples: int, err: RewardTimeout) -> None:
        from morl.logging import console

        self.timeouts[self.name] = self.timeouts.get(self.name, 0) + samples
        console.print(
            f"[yellow]reward {self.name!r}: {err}[/] on {samples} sample(s); they are not applicable "
            f"(rewards/{self.name}/timeouts). Limit: the reward's call_timeout_s, else train.reward_timeout_s "
            "(morl score: --reward-timeout-s)"
        )


def _score_one_by_one(
    call: _Guarded,
    arguments: _Arguments,
    prompts: list[str],
    completions: list[str],
    training: bool,
    batch_error: Exception,
    on_error: str,
) -> list[Any]:
    """After a batched call raised: find the samples that make it raise (NaN for them), score the others."""
    reward, name = call.reward, call.name
    values: list[Any] = []
    late: set[int] = set()  # samples that ran past the time limit: not applicable, and not scored again
    before = _learned_state(reward)
    for i in range(len(completions)):
        if late:  # one sample ran past the limit: the rest are not tried, or n slow samples would cost n limits
            rest = range(i, len(completions))
            values += [None] * len(rest)
            late.update(rest)
            call.timed_out(len(rest), RewardTimeout("not tried after a sample of the batch timed out"))
            break
        try:
            # evaluation mode: a stateful reward must not learn from each sample and then from the batch again
            out = call(arguments.select(reward, [i], False), before)
            single = _as_list(out)
            values.append(single[0] if single is not None and len(single) == 1 else math.nan)
        except RewardTimeout as err:
            _restore(reward, before)
            call.timed_out(1, err)
            values.append(None)
            late.add(i)
        except Exception as err:
            _restore(reward, before)
            if on_error == "raise":
                raise RewardError(
                    f"reward {name!r} raised {type(err).__name__}: {err}\n"
                    f"  prompt: {_show(prompts[i])}\n  completion: {_show(completions[i])}"
                ) from err
            values.append(math.nan)
    if on_error == "raise":
        raise RewardError(
            f"reward {name!r} raised {type(batch_error).__name__}: {batch_error} on a batch of {len(completions)}, "
            "but on no sample alone"
        ) from batch_error
    good = [i for i, v in enumerate(values) if i not in late and not (isinstance(v, float) and math.isnan(v))]
    if training and good:  # the passing samples as one training batch, so the reward learns from them once
        try:
            out = _as_list(call(arguments.select(reward, good, True), before))
        except Exception:  # RewardTimeout too: keep the evaluation-mode values
            out = None
        if out is not None and len(out) == len(good):
            for j, i in enumerate(good):
                values[i] = out[j]
        else:  # keep the evaluation-mode values; the state learns nothing from this batch
            _restore(reward, before)
    return values


def _as_list(out: Any) -> list[Any] | None:
    """A reward's output as a list, or None if it is not a sequence of values."""
    if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__iter__"):
        return None
    if isinstance(out, torch.Tensor) and out.dim() == 0:
        return None
    return list(out)


def _as_float(value: Any) -> float:
    """A number (int, float, bool, numpy or 0-d tensor) as float; NaN for anything else (text, lists, ...)."""
    if isinstance(value, (str, bytes)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor with several elements
        return math.nan


def _learned_state(reward: Any) -> dict[str, Any] | None:
    """A deep copy of a RewardFn's learned state (trailing-underscore attributes), to undo a failed call."""
    if not isinstance(reward, Component):
        return None
    return {k: copy.deepcopy(v) for k, v in vars(reward).items() if k.endswith("_") and not k.startswith("_")}


def _restore(reward: Any, state: dict[str, Any] | None) -> None:
    if state is None:
        return
    for key in [k for k in vars(reward) if k.endswith("_") and not k.startswith("_") and k not in state]:
        delattr(reward, key)
    for key, value in state.items():
        setattr(reward, key, copy.deepcopy(value))


def _show(text: Any, limit: int = 500) -> str:
    """``repr`` of a prompt or completion, cut to ``limit`` characters so a 100k-character completion stays legible."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(str(text))} characters)"
