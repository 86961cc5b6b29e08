"""The pipeline: a scikit-learn-style estimator over morl's components.

``Pipeline(...)`` stores what it is given (objects, short names or ``{"name": ..., **params}`` specs) and nothing
else; the components are built and checked against each other once, when first needed (:func:`build_parts`), and
:meth:`Pipeline.fit` returns the fitted pipeline with its results on trailing-underscore attributes (``run_dir_``,
``history_``, ``hub_url_``). ``get_params(deep=True)`` / ``set_params(controller__lr=0.25)`` / ``clone()`` work on the
pipeline as on its components. The training step lives in :class:`morl.trainer.Trainer`, the loop in
:mod:`morl.loop`, evaluation in :class:`morl.evaluation.Evaluator`. A pipeline built in Python records a recipe that
``morl fit`` re-runs (its data saved in the run).

Example:
    >>> pipe = Pipeline(policy="tinymath", rewards=["accuracy", "conciseness", "clarity"], controller="ctwa",
    ...                 config=TrainConfig(steps=2))
    >>> pipe.get_params()["controller__lr"]
    0.05
    >>> pipe.set_params(controller__lr=0.25).get_params()["controller__lr"]
    0.25
    >>> pipe.fit(make_split("train", 512, 0), make_split("eval", 64, 0)).run_dir_  # doctest: +SKIP
    PosixPath('runs/...')
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from morl import distributed
from morl.algos import AdvantageEstimator, PolicyAlgo
from morl.callbacks import Callback
from morl.components import Component, RecipeError, build, spec_of
from morl.config import TrainConfig
from morl.controllers.base import WeightController, check_family, check_scalarizer
from morl.diagnostics import Diagnostics, DiagnosticsConfig, make_diagnostics
from morl.evaluation import Evaluator
from morl.loop import FitLoop, FitResult, NonFiniteError
from morl.policy import Policy
from morl.rewards import PlacedOnDevice, RewardFn, objective_name
from morl.rollout import RolloutBackend, SamplingConfig
from morl.scalarize import Scalarizer
from morl.stages import Need, Updated
from morl.trainer import Components, Parts, Trainer

__all__ = ["FitResult", "NonFiniteError", "Pipeline", "TrainConfig", "build_parts", "check_temperatures"]

RewardSpec = str | dict[str, Any] | RewardFn | Callable[..., Sequence[float | None]]
COMPONENT_ROLES = ("scalarizer", "advantage", "algo", "controller", "rollout")


def build_parts(
    rewards: Sequence[RewardSpec],
    scalarizer: Any = "linear",
    advantage: Any = "group_norm",
    algo: Any = "grpo",
    controller: Any = "fixed",
    rollout: Any = "transformers",
    search: Sequence[str | Path] = (),
) -> Components:
    """Build each component (an object passes through) and check that they fit together: unique objective names,
    a controller that starts on these objectives, a family that says where the weights act, a scalarizer the
    controller uses, equal temperatures. ``morl validate`` runs exactly this, without a model."""
    if not rewards:
        raise RecipeError("rewards: give at least one objective (e.g. rewards: [accuracy, conciseness, clarity])")
    built_rewards = [_build_at(f"rewards[{i}]", "reward", spec, search) for i, spec in enumerate(rewards)]
    objectives = tuple(objective_name(r) for r in built_rewards)
    repeated = sorted({o for o in objectives if objectives.count(o) > 1})
    if repeated:
        raise RecipeError(f"rewards: objective names must be unique, {repeated} appear more than once: {objectives}")
    parts = Components(
        rewards=built_rewards,
        objectives=objectives,
        scalarizer=_build_at("scalarizer", "scalarizer", scalarizer, search),
        advantage=_build_at("advantage", "advantage", advantage, search),
        algo=_build_at("algo", "algo", algo, search),
        controller=_build_at("controller", "controller", controller, search),
        rollout=_build_at("rollout", "rollout", rollout, search),
    )
    check_family(parts.controller)
    try:
        parts.controller.clone().start(list(objectives))
    except (ValueError, KeyError) as err:
        raise RecipeError(str(err)) from None
    check_combination(parts.controller, parts.scalarizer, parts.rollout, parts.algo)
    sampling = parts.rollout.config if isinstance(parts.rollout.config, SamplingConfig) else None
    if sampling is not None:  # the sampling settings have one home, the rollout: the loss takes them from there
        parts.algo.follow_rollout(sampling.temperature, sampling.max_new_tokens)
    return parts


def _build_at(section: str, family: str, spec: Any, search: Sequence[str | Path]) -> Any:
    """:func:`morl.components.build`, its errors named by the recipe section (``rewards[1]``, not ``reward``)."""
    try:
        return build(family, spec, search)
    except RecipeError as err:
        message = str(err).removeprefix(f"{family}: ")
        raise RecipeError(message if message.startswith(f"{section}:") else f"{section}: {message}") from None


class Pipeline:
    """Compose the components, then :meth:`fit`. Parameters are stored as given; see the module docstring."""

    def __init__(
        self,
        policy: Policy | str,
        rewards: Sequence[RewardSpec],
        scalarizer: Scalarizer | str | dict = "linear",
        advantage: AdvantageEstimator | str | dict = "group_norm",
        algo: PolicyAlgo | str | dict = "grpo",
        controller: WeightController | str | dict = "fixed",
        rollout: RolloutBackend | str | dict = "transformers",
        config: TrainConfig | None = None,
        callbacks: Sequence[Callback] = (),
        recipe: dict[str, Any] | None = None,
        diagnostics: Diagnostics | DiagnosticsConfig | dict[str, Any] | bool = True,
    ) -> None:
        self.policy = policy
        self.rewards = rewards
        self.scalarizer = scalarizer
        self.advantage = advantage
        self.algo = algo
        self.controller = controller
        self.rollout = rollout
        self.config = config
        self.callbacks = callbacks
        self.recipe = recipe
        self.diagnostics = diagnostics

    # ---- scikit-learn's contract ----------------------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments; with ``deep``, each component's and the config's own as ``role__param``."""
        params = {name: getattr(self, name) for name in _PARAMS}
        if deep:
            for role in COMPONENT_ROLES:
                spec = params[role]
                component = spec if isinstance(spec, Component) else build(role, spec)
                params.update({f"{role}__{k}": v for k, v in component.get_params().items()})
            params.update({f"config__{k}": v for k, v in self._config().model_dump().items()})
        return params

    def set_params(self, **params: Any) -> Pipeline:
        """Change parameters (``controller="ctwa"``, ``controller__lr=0.25``, ``config__steps=10``); the components
        are built again on next use, so nothing learned before carries over."""
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            role, _, field = key.partition("__")
            if role not in _PARAMS:
                raise ValueError(f"Pipeline has no parameter {role!r}; allowed: {', '.join(_PARAMS)}")
            if field:
                if role not in (*COMPONENT_ROLES, "config"):
                    raise ValueError(f"{key}: only components and config take nested parameters")
                nested.setdefault(role, {})[field] = value
            else:
                setattr(self, role, value)
        for role, fields in nested.items():
            if role == "config":
                self.config = TrainConfig(**{**self._config().model_dump(), **fields})
            else:
                spec = getattr(self, role)
                component = spec if isinstance(spec, Component) else build(role, spec)
                setattr(self, role, type(component)(**{**component.get_params(), **fields}))
        self.__dict__.pop("trainer_", None)
        return self

    def clone(self) -> Pipeline:
        """An unfitted pipeline with the same parameters: fresh components and a policy loaded again from its
        source (``policy.config``), so training the clone leaves this one alone."""
        params = self.get_params(deep=False)
        policy = params["policy"]
        if isinstance(policy, Policy):
            params["policy"] = Policy.from_pretrained(**policy.config.model_dump())
        params["rewards"] = [_fresh(r) for r in params["rewards"]]
        for role in COMPONENT_ROLES:
            params[role] = _fresh(params[role])
        params["callbacks"] = [copy.deepcopy(cb) for cb in params["callbacks"]]
        params["diagnostics"] = _fresh_diagnostics(params["diagnostics"])
        return type(self)(**params)

    def __repr__(self) -> str:
        """Each component as its own repr shows it (names and mappings resolved, no model loaded)."""
        shown: dict[str, Any] = {"policy": self.policy, "rewards": [build("reward", r) for r in self.rewards]}
        shown |= {role: build(role, getattr(self, role)) for role in COMPONENT_ROLES}
        shown |= {"config": self._config(), "callbacks": list(self.callbacks), "diagnostics": self.diagnostics}
        return "Pipeline(\n  " + ",\n  ".join(f"{name}={value!r}" for name, value in shown.items()) + "\n)"

    # ---- built once, on first use -------------------------------------------------------------------------------

    @property
    def trainer_(self) -> Trainer:
        """The trainer over the built components (built on first use, again after :meth:`set_params`)."""
        if "trainer_" not in self.__dict__:
            self.__dict__["trainer_"] = self._build()
        return self.__dict__["trainer_"]

    def _build(self) -> Trainer:
        policy = Policy.from_pretrained(self.policy) if isinstance(self.policy, str) else self.policy
        built = build_parts(self.rewards, self.scalarizer, self.advantage, self.algo, self.controller, self.rollout)
        config = self._config()
        # on by default (``diagnostics=False`` or ``{"enabled": False}`` to opt out); first, so that user
        # callbacks see its metrics
        diagnostics = make_diagnostics(self.diagnostics)
        callbacks = [diagnostics, *self.callbacks] if diagnostics is not None else list(self.callbacks)
        built.controller.start(list(built.objectives))
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            [p for p in policy.model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
        )
        # a LoRA policy's reference is its base with the adapters disabled (the same module, no copy)
        reference = policy.kl_reference() if built.algo.needs_reference else None
        if distributed.launched():  # accelerate launch / torchrun: data parallel, sharded or mixed precision
            optimizer = _prepare_distributed(policy, reference, optimizer, built, callbacks)
        for reward in built.rewards:  # a reward model shares the policy's accelerator unless its config names one
            if isinstance(reward, PlacedOnDevice):
                reward.place(policy.device)
        parts = Parts(policy=policy, **vars(built))
        evaluator = Evaluator(
            built.rollout,
            built.rewards,
            config.eval_batch_size,
            config.on_reward_error,
            config.reward_timeout_s,
            config.reward_isolation,
        )
        return Trainer(parts, config, callbacks, optimizer, reference, evaluator)

    def validate(self) -> Pipeline:
        """Build and check the components now (loading the model), rather than on the first ``fit`` or ``step``."""
        self.trainer_  # noqa: B018 (built on access)
        return self

    def _config(self) -> TrainConfig:
        return self.config if self.config is not None else TrainConfig()

    # ---- what the pipeline is ---------------------------------------------------------------------------------

    @property
    def parts_(self) -> Parts:
        """The built components (the policy included)."""
        return self.trainer_.parts

    @property
    def objectives(self) -> list[str]:
        return list(self.parts_.objectives)

    @property
    def diagnostics_(self) -> Diagnostics | None:
        return next((cb for cb in self.trainer_.callbacks if isinstance(cb, Diagnostics)), None)

    def components(self) -> dict[str, Component | Any]:
        """The built components by role."""
        return {role: getattr(self.parts_, role) for role in COMPONENT_ROLES}

    def method(self) -> dict[str, Any]:
        """The method as the manifest records it: the components' names and where the weights act."""
        c, parts = self.parts_.controller, self.parts_
        return {
            "controller": c.name or type(c).__name__,
            "weights_act_on": c.level,
            "normalization": c.normalization,
            "scalarizer": parts.scalarizer.name if c.trains_on_score else None,
            "advantage": parts.advantage.name,
            "algo": parts.algo.name,
        }

    def recipe_(self) -> dict[str, Any]:
        """A recipe that builds this pipeline again (``morl fit`` re-runs it; the data is added by fit)."""
        if self.recipe is not None:
            return self.recipe
        diagnostics = self.diagnostics_
        parts = self.parts_
        return {
            "name": None,
            "policy": parts.policy.config.model_dump(mode="json"),
            "rewards": [spec_of("reward", r) for r in parts.rewards],
            **{role: spec_of(role, c) for role, c in self.components().items()},
            "train": self._config().model_dump(mode="json"),
            "diagnostics": diagnostics.config.model_dump(mode="json") if diagnostics else {"enabled": False},
        }

    @property
    def needs(self) -> frozenset[Need]:
        return self.trainer_.needs

    # ---- training ------------------------------------------------------------------------------------------------

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.trainer_.optimizer

    @property
    def reference(self) -> Policy | None:
        return self.trainer_.reference

    @property
    def lr_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return self.trainer_.lr_scheduler

    @property
    def step_count(self) -> int:
        return self.trainer_.state.step

    @property
    def data_position(self) -> int:
        return self.trainer_.state.data_position

    @property
    def nonfinite_streak(self) -> int:
        return self.trainer_.state.nonfinite_streak

    @property
    def validation_data(self) -> list[dict[str, Any]] | None:
        return self.trainer_.validation_data

    @validation_data.setter
    def validation_data(self, rows: list[dict[str, Any]] | None) -> None:
        self.trainer_.validation_data = rows

    def next_examples(self, data: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The next step's prompts in the run's seeded order (what :meth:`fit` trains on), for driving
        :meth:`step` by hand."""
        return self.trainer_.next_examples(data)

    def logprobs(self, policy: Policy, batch: Any) -> torch.Tensor:
        """Completion log-probs ``[N, L]`` under ``policy`` at the algorithm's temperature, as the step takes them."""
        return self.trainer_.logprobs(policy, batch)

    def step(
        self, examples: list[dict[str, Any]], train_data: list[dict[str, Any]] | None = None
    ) -> tuple[Updated, dict[str, float]]:
        """One training step on these prompts; returns the step's record and its metrics. ``train_data`` is where
        ``train.dynamic_sampling`` draws more prompts from (what :meth:`fit` trains on); without it a step keeps
        the groups it has."""
        if train_data is not None:
            self.trainer_.train_data = train_data
        return self.trainer_.step(examples)

    def evaluate(self, examples: list[dict[str, Any]]) -> dict[str, float]:
        """Per-objective means on held-out prompts, greedy and sampled as the config says."""
        return self.trainer_.evaluate(examples)

    def fit(
        self,
        train_data: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None = None,
        resume_from: str | Path | None = None,
        *,
        overwrite: bool = False,
        accept_changes: Sequence[str] = (),
    ) -> Pipeline:
        """Train for ``config.steps`` steps; evaluate at start, every ``eval_every`` steps and at the end. Returns
        the pipeline, with ``run_dir_``, ``history_`` (the metric rows), ``evals_`` and ``hub_url_`` set.

        The run directory is ``config.output_dir`` (or a fresh ``runs/<date-time>``). A folder that already holds
        a run is refused before anything is written, unless ``overwrite=True`` discards it; a second fit writing
        into the same folder at the same time fails at once (a lock). ``resume_from`` (a run directory or one of
        its checkpoints) continues that run from its newest complete checkpoint, if it is the same experiment:
        every difference in the recipe, the components' classes or the data is listed and refused, unless named
        in ``accept_changes`` (``"train.lr"``, or a whole section such as ``"controller"``), which the manifest then
        records. Writes a checkpoint every ``checkpoint_every`` steps and at the end; on SIGINT/SIGTERM it finishes
        the step, writes one and raises :class:`morl.signals.Interrupted`.
        """
        loop = FitLoop(self.trainer_, self.recipe_(), self.method())
        result = loop.fit(train_data, eval_data, resume_from, overwrite, accept_changes)
        self.run_dir_ = result.run_dir
        self.history_ = result.history
        self.evals_ = result.evals()
        self.hub_url_ = result.hub_url
        return self

    # ---- FitResult's fields, for one release --------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self._result("run_dir")

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._result("history")

    @property
    def hub_url(self) -> str | None:
        return self._result("hub_url")

    def evals(self) -> list[dict[str, Any]]:
        return self._result("evals")

    def _result(self, name: str) -> Any:
        """``fit()`` returned a ``FitResult`` before; its fields now live on ``name_`` attributes."""
        warnings.warn(
            f"fit() returns the pipeline: use pipe.{name}_ instead of pipe.{name}", DeprecationWarning, stacklevel=3
        )
        if f"{name}_" not in self.__dict__:
            raise AttributeError(f"pipe.{name}_ is set by fit(); this pipeline has not been fitted")
        return self.__dict__[f"{name}_"]


_PARAMS = (
    "policy",
    "rewards",
    *COMPONENT_ROLES,
    "config",
    "callbacks",
    "recipe",
    "diagnostics",
)


def _fresh(spec: Any) -> Any:
    """A component object's unstarted copy; a name, a mapping or a plain function as it is."""
    return spec.clone() if isinstance(spec, Component) else copy.deepcopy(spec) if isinstance(spec, dict) else spec


def _fresh_diagnostics(spec: Any) -> Any:
    return Diagnostics(spec.config) if isinstance(spec, Diagnostics) else copy.deepcopy(spec)


def _prepare_distributed(
    policy: Policy,
    reference: Policy | None,
    optimizer: torch.optim.Optimizer,
    built: Components,
    callbacks: Sequence[Callback],
) -> torch.optim.Optimizer:
    """Wrap the policy with accelerate (the launcher's config decides DDP, FSDP or DeepSpeed); see
    :mod:`morl.distributed` for what is shared between processes."""
    accelerator = distributed.make_accelerator(cpu=policy.device.type == "cpu")
    optimizer = policy.prepare(accelerator, optimizer)
    if reference is not None and reference.model is not policy.model:
        reference.model.to(accelerator.device)
    wants_gradients = [c for c in (built.controller, *callbacks) if Need.OBJECTIVE_GRADIENTS in c.needs]
    if policy.sharded and wants_gradients:
        who = wants_gradients[0]
        what = "gradient-cosine diagnostics need" if isinstance(who, Callback) else f"controller {who.name!r} needs"
        raise RecipeError(
            f"{what} whole per-objective gradients, which FSDP and DeepSpeed ZeRO-3 shard across processes; "
            "launch with DDP (cookbook/accelerate/ddp.yaml) or ZeRO-2 (zero2.yaml)"
        )
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None and built.algo.config.micro_batch_size:
        raise RecipeError(
            "DeepSpeed steps the optimizer inside every backward pass, so a mini-batch cannot be split into "
            "micro-batches: set algo.micro_batch_size: null, or launch with DDP or FSDP"
        )
    return optimizer


def check_combination(
    controller: WeightController, scalarizer: Scalarizer, rollout: RolloutBackend, algo: PolicyAlgo
) -> None:
    """Components that cannot work together fail here, before any model loads (``morl validate`` too)."""
    check_family(controller)
    check_scalarizer(controller, scalarizer)
    check_temperatures(rollout, algo)
    if algo.config.kl_in == "reward" and algo.config.kl_coef > 0 and not controller.trains_on_score:
        raise RecipeError(
            f"algo.kl_in: reward subtracts the KL from the scalar score, which controller {controller.name!r} "
            f"(weights at the {controller.level} level) does not train on; use algo.kl_in: loss"
        )


def check_temperatures(rollout: RolloutBackend, algo: PolicyAlgo) -> None:
    """The trainer's log-probs must be taken at the sampling temperature, or every ratio is off from step one."""
    if not isinstance(rollout.config, SamplingConfig) or algo.config.temperature is None:
        return
    sampled = rollout.config.temperature
    if sampled != algo.config.temperature:
        raise RecipeError(
            f"rollout.temperature is {sampled} but algo.temperature is {algo.config.temperature}: the temperature "
            "has one home, rollout.temperature; drop algo.temperature (the loss takes the rollout's)"
        )
