"""The metric schema: one place that says how every metric morl logs is named, and how to read a name back.

Producers (the pipeline, diagnostics, controllers) build keys with these functions; readers (``morl plot``,
``morl compare``, the progress bar) look keys up with the same functions and never take a name apart by hand.
Names follow TRL where it has one (``rewards/{name}/mean``, ``reward``, ``completions/mean_length``, ``kl``,
``entropy``, ``clip_ratio/...``); method state lives under the method's own namespace (``ctwa/u/{name}``).

A key is ``/``-separated, so **an objective name (and every other part) cannot contain ``/``**: the builders
reject it, which is what makes :func:`parse_key` the exact inverse of the builders. ``mean_length`` is taken by
the evaluation's mean response length, so it cannot name an evaluated objective either.

Example:
    >>> reward_mean("accuracy")
    'rewards/accuracy/mean'
    >>> parse_key("grad_cos/accuracy/clarity").objectives
    ('accuracy', 'clarity')
    >>> parse_key(method_key("ctwa", "u", "clarity"))
    MetricKey(family='method', namespace='ctwa', name='u', objectives=('clarity',), mode=None, signal=None)
    >>> direction(eval_mean_length("greedy")), direction(eval_metric("greedy", "accuracy")), direction(LOSS)
    ('minimize', 'maximize', None)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Direction = Literal["maximize", "minimize"]

SEP = "/"

# ---- namespaces (the first part of a key) -------------------------------------------------------------------
REWARDS = "rewards"  # per-objective raw rewards of the training batch, unweighted
WEIGHTS = "weights"  # λ per objective, logged by every controller
EVAL = "eval"  # held-out evaluation, per mode
COMPLETIONS = "completions"  # response lengths of the training batch
ADVANTAGES = "advantages"
COV = "cov"  # Cov(r_m, signal), mean over prompt groups
CORR = "corr"  # Corr(r_m, signal)
ALARM = "alarm"  # 1 while an interference alarm is raised for the objective
GRAD_COS = "grad_cos"  # cosine of two objectives' policy gradients
GRAD_ALIGN = "grad_align"  # cosine of an objective's gradient with the update
FORECAST = "forecast"  # an objective's first-order change along the recent update, on fresh completions
CLIP_RATIO = "clip_ratio"  # clipped tokens during the update (TRL's name)
CLIP = "clip"  # clipping measured under the updated policy
TIMING = "timing"  # seconds per stage of a step
SAMPLING = "sampling"  # importance sampling of stale rollouts
TRAIN = "train"  # bookkeeping of the training loop

#: Namespaces morl itself owns; any other first part is a method's own namespace (see :func:`method_key`).
NAMESPACES = (
    REWARDS,
    WEIGHTS,
    EVAL,
    COMPLETIONS,
    ADVANTAGES,
    COV,
    CORR,
    ALARM,
    GRAD_COS,
    GRAD_ALIGN,
    FORECAST,
    CLIP_RATIO,
    CLIP,
    TIMING,
    SAMPLING,
    TRAIN,
)
#: Method namespaces of the built-in controllers (a user's controller picks its own).
CTWA = "ctwa"
LAGRANGIAN = "lagrangian"
GRADNORM = "gradnorm"
PAMA = "pama"
DYNAMIC = "dynamic"
SCHEDULE = "schedule"
DYNAMIC_SAMPLING = "dynamic_sampling"  # DAPO's batch filter (a stage of the step, not a method)

#: Families of :class:`MetricKey` besides the namespaces above.
SCALAR = "scalar"  # a key without a namespace: ``reward``, ``loss``, ``kl``, ...
METHOD = "method"  # a method's own namespace

# ---- fixed names ---------------------------------------------------------------------------------------------
REWARD_STATS = ("mean", "std", "skipped", "timeouts")
EVAL_MODES = ("greedy", "sampled")
SIGNALS = ("score", "clipped_weight")  # what a covariance is taken with
FORECAST_QUANTITIES = ("change", "z", "alarm")  # see morl.forecast
MEAN_LENGTH = "mean_length"

SCORE = "reward"  # mean scalarised score of the batch (TRL's ``reward``)
SCORE_STD = "reward_std"
LOSS = "loss"
LEARNING_RATE = "learning_rate"  # TRL's name; the lr of the step's first optimizer step
KL = "kl"
ENTROPY = "entropy"
GRAD_NORM = "grad_norm"
SKIPPED_NONFINITE = "skipped_nonfinite"
COMPLETIONS_MEAN_LENGTH = f"{COMPLETIONS}/{MEAN_LENGTH}"
COMPLETIONS_MAX_LENGTH = f"{COMPLETIONS}/max_length"
COMPLETIONS_MIN_LENGTH = f"{COMPLETIONS}/min_length"
# TRL's names: completions that hit max_new_tokens without an end-of-sequence token, and the lengths of the others
COMPLETIONS_CLIPPED_RATIO = f"{COMPLETIONS}/clipped_ratio"
COMPLETIONS_TERMINATED = {
    stat: f"{COMPLETIONS}/{stat}_terminated_length" for stat in ("mean", "min", "max")
}  # 0 when none terminated, as TRL logs it
FRAC_REWARD_ZERO_STD = "frac_reward_zero_std"  # prompt groups whose score has no spread (no signal), TRL's name
NUM_TOKENS = "num_tokens"  # prompt and completion tokens trained on since the run began (TRL's name)
STEP_TIME = "step_time"  # seconds of the whole step (TRL's name)
ADVANTAGES_ZERO_FRACTION = f"{ADVANTAGES}/zero_fraction"
CLIP_RATIO_LOW = f"{CLIP_RATIO}/low_mean"
CLIP_RATIO_HIGH = f"{CLIP_RATIO}/high_mean"
CLIP_RATIO_REGION = f"{CLIP_RATIO}/region_mean"
CLIP_REMOVED_MASS = f"{CLIP}/removed_mass"
CLIP_TOKEN_FRACTION = f"{CLIP}/token_fraction"
SKIPPED_STEPS = f"{TRAIN}/skipped_steps"

#: Row fields that are bookkeeping, not metrics.
ROW_FIELDS = ("step", "kind")


@dataclass(frozen=True)
class MetricKey:
    """A metric name taken apart: which family it belongs to and the parts that vary.

    ``family`` is a namespace from :data:`NAMESPACES`, :data:`SCALAR` or :data:`METHOD`; ``namespace`` is the key's
    first part (``""`` for a scalar); ``name`` the quantity (``"mean"``, ``"u"``, ``"region_mean"``, ...);
    ``objectives`` the objective(s) it is about (two for a gradient cosine); ``mode`` the evaluation mode;
    ``signal`` what a covariance is taken with.
    """

    family: str
    namespace: str
    name: str
    objectives: tuple[str, ...] = ()
    mode: str | None = None
    signal: str | None = None

    @property
    def objective(self) -> str | None:
        """The (first) objective, or None for a key about no objective."""
        return self.objectives[0] if self.objectives else None

    @property
    def key(self) -> str:
        """The metric name again: ``parse_key(k).key == k``."""
        family, name, objs = self.family, self.name, self.objectives
        if family == SCALAR:
            return name
        if family == REWARDS:
            return _join(REWARDS, objs[0], name)
        if family == EVAL:
            return _join(EVAL, self.mode, objs[0] if objs else name)
        if family in (COV, CORR):
            return _join(family, self.signal, objs[0])
        if family in (WEIGHTS, ALARM, GRAD_ALIGN, GRAD_COS):
            return _join(family, *objs)
        if family in (METHOD, FORECAST):
            return _join(self.namespace, name, *objs)
        return _join(self.namespace, name)


# ---- builders ---------------------------------------------------------------------------------------------------


def reward_mean(objective: str) -> str:
    """Mean raw reward of an objective over the training batch (TRL's name)."""
    return _join(REWARDS, _part(objective, "objective"), "mean")


def reward_std(objective: str) -> str:
    """Standard deviation of an objective's raw reward over the training batch."""
    return _join(REWARDS, _part(objective, "objective"), "std")


def reward_stat(objective: str, stat: str) -> str:
    """``rewards/{objective}/{stat}``: :data:`REWARD_STATS` are morl's (``skipped``, ``timeouts`` count completions);
    a reward's own counters (:meth:`morl.rewards.RewardFn.counters`) use the same form."""
    return _join(REWARDS, _part(objective, "objective"), _part(stat, "statistic"))


def weight(objective: str) -> str:
    """The weight λ of an objective (every controller logs it)."""
    return _join(WEIGHTS, _part(objective, "objective"))


def eval_metric(mode: str, objective: str) -> str:
    """Held-out mean reward of an objective under ``mode`` (``greedy`` or ``sampled``)."""
    if objective == MEAN_LENGTH:
        raise ValueError(f"`{MEAN_LENGTH}` is the evaluation's mean length (eval_mean_length), not an objective name")
    return _join(EVAL, _part(mode, "mode"), _part(objective, "objective"))


def eval_mean_length(mode: str) -> str:
    """Held-out mean response length (tokens) under ``mode``: how the paper reports conciseness."""
    return _join(EVAL, _part(mode, "mode"), MEAN_LENGTH)


def covariance(signal: str, objective: str) -> str:
    """Cov(r_objective, signal) over prompt groups; ``signal`` is one of :data:`SIGNALS` (the covariance law)."""
    return _join(COV, _part(signal, "signal"), _part(objective, "objective"))


def correlation(signal: str, objective: str) -> str:
    """Corr(r_objective, signal): the unit-free version of :func:`covariance`."""
    return _join(CORR, _part(signal, "signal"), _part(objective, "objective"))


def alarm(objective: str) -> str:
    """1 while the interference alarm of an objective is raised, else 0."""
    return _join(ALARM, _part(objective, "objective"))


def grad_cos(a: str, b: str) -> str:
    """Cosine of the policy gradients of objectives ``a`` and ``b`` (logged for ``a`` before ``b``)."""
    return _join(GRAD_COS, _part(a, "objective"), _part(b, "objective"))


def grad_align(objective: str) -> str:
    """Cosine of an objective's policy gradient with the parameter update the step made."""
    return _join(GRAD_ALIGN, _part(objective, "objective"))


def forecast(quantity: str, objective: str) -> str:
    """``forecast/{quantity}/{objective}``: the interference forecast (:mod:`morl.forecast`); ``change`` is the
    predicted first-order change in units of the reward's spread, ``z`` its signal-to-noise ratio, ``alarm`` 1 while
    the forecast alarm is raised."""
    if quantity not in FORECAST_QUANTITIES:
        raise ValueError(f"a forecast quantity is one of {FORECAST_QUANTITIES}. Found {quantity!r}")
    return _join(FORECAST, quantity, _part(objective, "objective"))


def timing(stage: str) -> str:
    """Seconds a step spent in ``stage`` (``rollout``, ``reward``, ``update``, ...)."""
    return _join(TIMING, _part(stage, "stage"))


def method_key(namespace: str, quantity: str, objective: str | None = None) -> str:
    """A method's own metric, under its namespace: ``method_key("ctwa", "u", "accuracy") == "ctwa/u/accuracy"``.

    The namespace cannot be one morl owns (:data:`NAMESPACES`), so a method's metric never reads as morl's.
    """
    _part(namespace, "namespace")
    if namespace in NAMESPACES:
        raise ValueError(f"namespace {namespace!r} belongs to morl's own metrics; name the method's namespace")
    parts = [namespace, _part(quantity, "quantity")]
    if objective is not None:
        parts.append(_part(objective, "objective"))
    return _join(*parts)


# ---- reading keys back ------------------------------------------------------------------------------------------


def parse_key(key: str) -> MetricKey | None:
    """Take a metric name apart (the inverse of the builders); None for a name outside the schema.

    Bookkeeping fields (``step``, ``kind``) and malformed names (an empty part, a part too many) are None.
    """
    if not isinstance(key, str) or not key or key in ROW_FIELDS:
        return None
    parts = key.split(SEP)
    if any(not p for p in parts):
        return None
    head, rest = parts[0], parts[1:]
    if not rest:
        return MetricKey(SCALAR, "", head)
    n = len(rest)
    if head == REWARDS:
        return MetricKey(REWARDS, head, rest[1], (rest[0],)) if n == 2 else None
    if head == EVAL:
        if n != 2:
            return None
        mode, what = rest
        if what == MEAN_LENGTH:
            return MetricKey(EVAL, head, MEAN_LENGTH, mode=mode)
        return MetricKey(EVAL, head, "", (what,), mode=mode)
    if head in (COV, CORR):
        return MetricKey(head, head, "", (rest[1],), signal=rest[0]) if n == 2 else None
    if head in (WEIGHTS, ALARM, GRAD_ALIGN):
        return MetricKey(head, head, "", (rest[0],)) if n == 1 else None
    if head == GRAD_COS:
        return MetricKey(head, head, "", tuple(rest)) if n == 2 else None
    if head == FORECAST:
        return MetricKey(head, head, rest[0], (rest[1],)) if n == 2 else None
    if head in NAMESPACES:  # morl's namespaces without objectives: the rest is the quantity's name
        return MetricKey(head, head, SEP.join(rest))
    if n == 1:
        return MetricKey(METHOD, head, rest[0])
    if n == 2:
        return MetricKey(METHOD, head, rest[0], (rest[1],))
    return None


def direction(key: str, objectives: Mapping[str, str] | None = None) -> Direction | None:
    """Which way is better for this metric, when that is known: ``"maximize"``, ``"minimize"`` or None.

    Rewards (training and held-out) and the scalar score maximize; mean response lengths minimize (the paper's
    conciseness). Everything else (loss, KL, weights, covariances, timings, ...) has no better direction: None.
    ``objectives`` maps objective names to their own direction (a run's manifest) where an objective minimizes.
    """
    parsed = parse_key(key)
    if parsed is None:
        return None
    if key == SCORE:
        return "maximize"
    if key == COMPLETIONS_MEAN_LENGTH or (parsed.family == EVAL and parsed.name == MEAN_LENGTH):
        return "minimize"
    if (parsed.family == REWARDS and parsed.name == "mean") or (parsed.family == EVAL and parsed.objective):
        own = (objectives or {}).get(parsed.objective or "")
        return own if own in ("maximize", "minimize") else "maximize"
    return None


# ---- helpers ----------------------------------------------------------------------------------------------------


def _part(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a metric key's {what} should be a non-empty string. Found `{what} = {value!r}`")
    if SEP in value:
        raise ValueError(f"a metric key's {what} cannot contain '{SEP}' (it separates the parts). Found {value!r}")
    return value


def _join(*parts: str | None) -> str:
    return SEP.join(p for p in parts if p is not None)
