"""The pipeline: compose the components, check them against each other, then :meth:`Pipeline.fit`.

It is the composition root and a thin facade: the training step and the loop live in :class:`morl.trainer.Trainer`,
evaluation in :class:`morl.evaluation.Evaluator`, checkpoints in :mod:`morl.checkpoint`, the run directory in
:mod:`morl.run`. A pipeline built in Python records a recipe that ``morl fit`` re-runs (its data saved in the run).

Example:
    >>> pipe = Pipeline(policy=Policy.from_pretrained("tinymath"), rewards=["accuracy", "conciseness", "clarity"],
    ...                 controller="ctwa", config=TrainConfig(steps=2))  # doctest: +SKIP
    >>> pipe.fit(make_split("train", 512, 0), make_split("eval", 64, 0))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from morl import distributed
from morl.algos import AdvantageEstimator, PolicyAlgo
from morl.callbacks import Callback
from morl.components import Component, RecipeError, build, spec_of
from morl.controllers.base import AdvantageLevel, GradientLevel, RewardLevel, WeightController, check_scalarizer
from morl.diagnostics import Diagnostics, DiagnosticsConfig, make_diagnostics
from morl.evaluation import Evaluator
from morl.policy import Policy
from morl.rewards import PlacedOnDevice, RewardFn, objective_name
from morl.rollout import RolloutBackend, SamplingConfig
from morl.scalarize import Scalarizer
from morl.stages import Need, Updated
from morl.trainer import FitResult, NonFiniteError, Parts, TrainConfig, Trainer

__all__ = ["FitResult", "NonFiniteError", "Pipeline", "TrainConfig", "check_temperatures"]

RewardSpec = str | dict[str, Any] | RewardFn | Callable[..., Sequence[float | None]]


class Pipeline:
    """Compose the components, then :meth:`fit`. Components may be objects, short names or dict specs."""

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
        self.policy = Policy.from_pretrained(policy) if isinstance(policy, str) else policy
        self.rewards = [build("reward", r) for r in rewards]
        self.objectives = [objective_name(r) for r in self.rewards]
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objective names must be unique, got {self.objectives}")
        self.scalarizer = build("scalarizer", scalarizer)
        self.advantage = build("advantage", advantage)
        self.algo = build("algo", algo)
        self.controller = build("controller", controller)
        self.rollout = build("rollout", rollout)
        self.config = config or TrainConfig()
        check_combination(self.controller, self.scalarizer, self.rollout, self.algo)
        # on by default (``diagnostics=False`` or ``{"enabled": False}`` to opt out); first, so that user
        # callbacks see its metrics
        self.diagnostics = make_diagnostics(diagnostics)
        self.callbacks = [self.diagnostics, *callbacks] if self.diagnostics is not None else list(callbacks)
        self.controller.start(self.objectives)
        optimizer = torch.optim.AdamW(
            [p for p in self.policy.model.parameters() if p.requires_grad],
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
        )
        # a LoRA policy's reference is its base with the adapters disabled (the same module, no copy)
        self.reference: Policy | None = self.policy.kl_reference() if self.algo.needs_reference else None
        if distributed.launched():  # accelerate launch / torchrun: data parallel, sharded or mixed precision
            optimizer = self._prepare_distributed(optimizer)
        for reward in self.rewards:  # a reward model shares the policy's accelerator unless its config names one
            if isinstance(reward, PlacedOnDevice):
                reward.place(self.policy.device)
        self.recipe = recipe if recipe is not None else self._recipe()
        self.trainer = Trainer(
            Parts(
                policy=self.policy,
                rewards=self.rewards,
                objectives=tuple(self.objectives),
                scalarizer=self.scalarizer,
                advantage=self.advantage,
                algo=self.algo,
                controller=self.controller,
                rollout=self.rollout,
            ),
            config=self.config,
            callbacks=self.callbacks,
            optimizer=optimizer,
            reference=self.reference,
            evaluator=Evaluator(
                self.rollout,
                self.rewards,
                self.config.eval_batch_size,
                self.config.on_reward_error,
                self.config.reward_timeout_s,
                self.config.reward_isolation,
            ),
            recipe=self.recipe,
            manifest_method=self.method(),
        )

    def _prepare_distributed(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Wrap the policy with accelerate (the launcher's config decides DDP, FSDP or DeepSpeed); see
        :mod:`morl.distributed` for what is shared between processes."""
        accelerator = distributed.make_accelerator(cpu=self.policy.device.type == "cpu")
        optimizer = self.policy.prepare(accelerator, optimizer)
        if self.reference is not None and self.reference.model is not self.policy.model:
            self.reference.model.to(accelerator.device)
        grad_cosines = self.diagnostics is not None and self.diagnostics.config.grad_cosine_every
        if self.policy.sharded and (isinstance(self.controller, GradientLevel) or grad_cosines):
            what = "gradient-cosine diagnostics need" if grad_cosines else f"controller {self.controller.name!r} needs"
            raise RecipeError(
                f"{what} whole per-objective gradients, which FSDP and DeepSpeed ZeRO-3 shard across processes; "
                "launch with DDP (cookbook/accelerate/ddp.yaml) or ZeRO-2 (zero2.yaml)"
            )
        if getattr(accelerator.state, "deepspeed_plugin", None) is not None and self.algo.config.micro_batch_size:
            raise RecipeError(
                "DeepSpeed steps the optimizer inside every backward pass, so a mini-batch cannot be split into "
                "micro-batches: set algo.micro_batch_size: null, or launch with DDP or FSDP"
            )
        return optimizer

    def __repr__(self) -> str:
        lines = [f"policy={self.policy!r}", f"rewards={self.rewards!r}"]
        lines += [f"{role}={c!r}" for role, c in self.components().items()]
        lines.append(f"config={self.config!r}")
        return "Pipeline(\n  " + ",\n  ".join(lines) + "\n)"

    # ---- what the pipeline is ---------------------------------------------------------------------------------

    def components(self) -> dict[str, Component | Any]:
        return {
            "scalarizer": self.scalarizer,
            "advantage": self.advantage,
            "algo": self.algo,
            "controller": self.controller,
            "rollout": self.rollout,
        }

    def method(self) -> dict[str, Any]:
        """The method as the manifest records it: the components' names and where the weights act."""
        c = self.controller
        return {
            "controller": c.name or type(c).__name__,
            "weights_act_on": c.level,
            "normalization": c.normalization,
            "scalarizer": self.scalarizer.name if isinstance(self.controller, RewardLevel) else None,
            "advantage": self.advantage.name,
            "algo": self.algo.name,
        }

    def _recipe(self) -> dict[str, Any]:
        """A recipe that builds this pipeline again (``morl fit`` re-runs it; the data is added by fit)."""
        diagnostics = self.diagnostics.config.model_dump(mode="json") if self.diagnostics else {"enabled": False}
        return {
            "name": None,
            "policy": self.policy.config.model_dump(mode="json"),
            "rewards": [spec_of("reward", r) for r in self.rewards],
            **{role: spec_of(role, c) for role, c in self.components().items()},
            "train": self.config.model_dump(mode="json"),
            "diagnostics": diagnostics,
        }

    @property
    def needs(self) -> frozenset[Need]:
        return self.trainer.needs

    # ---- delegation -------------------------------------------------------------------------------------------

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.trainer.optimizer

    @property
    def step_count(self) -> int:
        return self.trainer.state.step

    @property
    def data_position(self) -> int:
        return self.trainer.state.data_position

    @property
    def nonfinite_streak(self) -> int:
        return self.trainer.state.nonfinite_streak

    @property
    def validation_data(self) -> list[dict[str, Any]] | None:
        return self.trainer.validation_data

    @validation_data.setter
    def validation_data(self, rows: list[dict[str, Any]] | None) -> None:
        self.trainer.validation_data = rows

    def step(self, examples: list[dict[str, Any]]) -> tuple[Updated, dict[str, float]]:
        """One training step on these prompts; returns the step's record and its metrics."""
        return self.trainer.step(examples)

    def evaluate(self, examples: list[dict[str, Any]]) -> dict[str, float]:
        """Per-objective means on held-out prompts, greedy and sampled as the config says."""
        return self.trainer.evaluate(examples)

    def fit(
        self,
        train_data: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None = None,
        resume_from: str | Path | None = None,
        *,
        overwrite: bool = False,
        accept_changes: Sequence[str] = (),
    ) -> FitResult:
        """Train for ``config.steps`` steps; evaluate at start, every ``eval_every`` steps and at the end.

        The run directory is ``config.output_dir`` (or a fresh ``runs/<date-time>``). A folder that already holds
        a run is refused before anything is written, unless ``overwrite=True`` discards it; a second fit writing
        into the same folder at the same time fails at once (a lock). ``resume_from`` (a run directory or one of
        its checkpoints) continues that run from its newest complete checkpoint, if it is the same experiment:
        every difference in the recipe, the components' classes or the data is listed and refused, unless named
        in ``accept_changes`` (``"train.lr"``, or a whole section such as ``"controller"``), which the manifest then
        records. Writes a checkpoint every ``checkpoint_every`` steps and at the end; on SIGINT/SIGTERM it finishes
        the step, writes one and raises :class:`morl.checkpoint.Interrupted`.
        """
        return self.trainer.fit(train_data, eval_data, resume_from, overwrite, accept_changes)


def check_combination(
    controller: WeightController, scalarizer: Scalarizer, rollout: RolloutBackend, algo: PolicyAlgo
) -> None:
    """Components that cannot work together fail here, before any model loads (``morl validate`` too)."""
    if not isinstance(controller, (RewardLevel, AdvantageLevel, GradientLevel)):
        raise RecipeError(
            f"controller: {type(controller).__name__} subclasses none of RewardLevel, AdvantageLevel, GradientLevel "
            "(morl.controllers): its family says where its weights act, so subclass one of them"
        )
    check_scalarizer(controller, scalarizer)
    check_temperatures(rollout, algo)
    if algo.config.kl_in == "reward" and algo.config.kl_coef > 0 and not isinstance(controller, RewardLevel):
        raise RecipeError(
            f"algo.kl_in: reward subtracts the KL from the scalar score, which controller {controller.name!r} "
            f"(weights at the {controller.level} level) does not train on; use algo.kl_in: loss"
        )


def check_temperatures(rollout: RolloutBackend, algo: PolicyAlgo) -> None:
    """The trainer's log-probs must be taken at the sampling temperature, or every ratio is off from step one."""
    if not isinstance(rollout.config, SamplingConfig):
        return
    sampled = rollout.config.temperature
    if sampled != algo.config.temperature:
        raise RecipeError(
            f"rollout.temperature is {sampled} but algo.temperature is {algo.config.temperature}: "
            "set both to the same value"
        )
