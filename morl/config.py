"""The loop's settings (recipe section ``train:``): how many steps, how big a step, when to evaluate, where to write.

Kept apart from the trainer, as TRL keeps ``GRPOConfig`` apart from ``GRPOTrainer``: users read and write this
page; the trainer's code reads it.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TrainConfig(BaseModel):
    """Loop settings: how many steps, how big a step, when to evaluate, where to write."""

    # every float finite: a NaN or infinite lr or weight decay passes `gt=0` / `ge=0` and only shows up as NaN weights
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    steps: int = Field(100, ge=0, description="training steps (one rollout batch and its policy update each)")
    prompts_per_step: int = Field(
        8, ge=1, description="P prompts per step (P × K completions); must divide evenly across processes"
    )
    group_size: int = Field(
        8, ge=2, le=4096, description="K completions per prompt; group methods need K >= 2 (at most 4096)"
    )
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the policy")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    seed: int = Field(
        0, ge=0, lt=2**31, description="seed of prompt order and sampling (offset per process and per step)"
    )
    eval_every: int = Field(25, ge=0, description="evaluate every N steps (0: only at start and end)")
    eval_greedy: bool = Field(True, description="evaluate with greedy decoding")
    eval_sampled: bool = Field(True, description="evaluate with the rollout's sampling (one completion per prompt)")
    eval_batch_size: int = Field(64, ge=1, description="eval prompts generated at once; lower it to save memory")
    output_dir: str | None = Field(
        None,
        min_length=1,
        description="run directory; must not hold a run already (resume it, or overwrite explicitly); "
        "None: a fresh runs/<date-time>",
    )
    on_reward_error: Literal["raise", "skip"] = Field(
        "raise", description="a reward that fails: stop, or mark the sample not applicable and count it"
    )
    checkpoint_every: int = Field(50, ge=0, description="write a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints to keep")
    max_nonfinite_steps: int = Field(
        3, ge=1, description="stop after this many steps in a row whose loss or gradient was not finite"
    )
    reward_timeout_s: float | None = Field(
        60.0,
        gt=0,
        le=86_400,  # a day: the watchdog's timer takes a C double of seconds, and a longer limit is no limit
        description="seconds one reward call (a batch) may take; past it its samples are not applicable (NaN) and "
        "counted as rewards/<name>/timeouts. A reward's own call_timeout_s wins; None: no limit",
    )
    reward_isolation: Literal["thread", "process"] = Field(
        "thread",
        description="where rewards without an isolate attribute run. thread: in this process under a watchdog (state "
        "and closures work; a call past its limit is abandoned, not killed, and one that holds the GIL past it ends "
        "the process); process: in a forked worker killed at the limit (stops anything; closure state stays in the "
        "worker). RewardFn subclasses run in this process",
    )
    max_failed_reward_steps: int = Field(
        3,
        ge=1,
        description="stop (after a checkpoint of the last good step) when a reward timed out or failed on every "
        "sample for this many steps in a row",
    )
    stop_grace_s: float | None = Field(
        30.0,
        gt=0,
        description="after a first SIGINT/SIGTERM the step may finish for this many seconds, then the run stops at "
        "once keeping the last complete step's checkpoint (as a second signal does); None: wait for the step",
    )
    save_model: bool = Field(True, description="write the final model (Hugging Face format) to the run directory")
    threads: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] | None = Field(
        "auto",
        description="torch CPU threads. auto: 1 for a policy on the CPU with fewer than 5M parameters (tiny operators: "
        "more threads only wait on each other, and far longer on a busy machine; benchmarks/RESULTS.md), else "
        "torch's setting; a number: that many; None: leave torch's setting alone (its default: one per core)",
    )
    overlap_after_update: bool | Literal["auto"] = Field(
        "auto",
        description="run CTWA's after-update pass (one no-grad forward of the batch under the updated policy) in a "
        "helper process beside the next rollout, on a spare CPU core: the same weights, a CTWA step 6-21% shorter on "
        "TinyMath (benchmarks/overlap.py). The controller learns from the pass in the next step, before its "
        "weighting, so its metrics (ctwa/*, cov|corr/clipped_weight/*, clip/*) appear one row later. auto: on for a "
        "policy on the CPU in one process when torch uses fewer threads than there are cores; true: on wherever it "
        "can run (else an error); false: off",
    )
    progress: bool = Field(True, description="show a progress bar and summary in the console (process 0)")
    loggers: list[Literal["jsonl", "tensorboard", "wandb", "trackio"]] = Field(
        default_factory=lambda: ["jsonl"], description="where metrics go besides metrics.jsonl, which is always written"
    )
    dynamic_sampling: bool = Field(
        False,
        description="DAPO's dynamic sampling: drop prompt groups whose rewards are all equal (no signal) and sample "
        "more prompts to refill the step",
    )
    dynamic_sampling_rounds: int = Field(
        3,
        ge=1,
        description="with dynamic_sampling: at most this many refill rounds per step, then train on what is kept",
    )
    lr_scheduler_type: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant",
        description="learning-rate schedule (TRL's name; transformers' get_scheduler) over optimizer steps, as TRL "
        "counts them: each training step takes algo.epochs × algo.minibatches, so the schedule spans train.steps × "
        "epochs × minibatches (a resume that extends train.steps stretches what is left of it); constant: train.lr",
    )
    warmup_steps: int | float = Field(
        0,
        ge=0,
        description="optimizer steps of linear warmup from 0 to train.lr; a number below 1 is a ratio of all "
        "optimizer steps (transformers 5); when above 0 it wins over warmup_ratio",
    )
    warmup_ratio: float = Field(
        0.0, ge=0, le=1, description="warmup as a share of all optimizer steps (rounded up), if warmup_steps is 0"
    )
    log_completions: bool = Field(
        False,
        description="log sampled completions with their per-objective rewards, score and advantage to "
        "RUN_DIR/completions.jsonl (and as a table to TensorBoard or W&B when among loggers)",
    )
    num_completions_to_print: int | None = Field(
        None,
        ge=1,
        description="with log_completions: how many of a step's completions, taken in batch order so that a "
        "prompt's group sits together; None: all",
    )
    log_completions_every: int = Field(1, ge=1, description="with log_completions: log them every N training steps")
    push_to_hub: bool = Field(
        False,
        description="at the end of a finished fit, write a model card (RUN_DIR/model/README.md) and upload "
        "RUN_DIR/model to the Hugging Face Hub (process 0); a failed upload is reported and the run kept",
    )
    hub_model_id: str | None = Field(
        None, description="Hub repository, 'user/name' or 'name' (your namespace); None: the run directory's name"
    )
    hub_private_repo: bool | None = Field(
        None, description="create the Hub repository private; None: the namespace's default (TRL's name)"
    )

    @field_validator("warmup_steps")
    @classmethod
    def _whole_steps_or_ratio(cls, value: int | float) -> int | float:
        if value >= 1 and value != int(value):
            raise ValueError(f"a whole number of steps, or a ratio below 1 of all optimizer steps. Found {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.lr_scheduler_type == "constant" and (self.warmup_steps or self.warmup_ratio):
            raise ValueError(
                "lr_scheduler_type: constant has no warmup; use constant_with_warmup (or linear, cosine) to warm up"
            )
        if self.push_to_hub and not self.save_model:
            raise ValueError("push_to_hub uploads the final model: it needs save_model: true")
        return self

    def warmup_for(self, total: int) -> int:
        """Warmup optimizer steps out of ``total``, by transformers' rule: whole steps win over a ratio."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.ceil(total * (self.warmup_steps or self.warmup_ratio))
