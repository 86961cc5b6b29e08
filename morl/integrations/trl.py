"""morl inside TRL: a morl weight controller, the covariance diagnostics, the interference forecast and the alarms
in TRL's ``GRPOTrainer``, by changing the trainer's class and adding one argument.

    from morl.integrations.trl import MorlGRPOTrainer

    trainer = MorlGRPOTrainer(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        reward_funcs=[accuracy, conciseness, clarity],
        args=GRPOConfig(...),
        train_dataset=dataset,
        controller={"name": "ctwa", "targets": {"accuracy": 0.45, "conciseness": 0.0, "clarity": 0.0}, "lr": 0.5},
    )
    trainer.train()

The controller replaces TRL's aggregation of the per-function rewards (``reward_weights``,
``multi_objective_aggregation``, ``scale_rewards``): its ``weigh`` makes the advantages TRL's loss multiplies with
the ratios. Everything else is TRL's: generation (vLLM included), the reward calls, the loss, the optimizer,
logging and checkpoints. Reward-level controllers (fixed, schedule, CTWA) and advantage-level ones (lagrangian,
gdpo) run; gradient-level ones and ``dynamic_hv`` are refused at construction
(:func:`morl.integrations.host.check_hostable` says why and what to use instead). Without ``controller``, TRL's
own weighting runs as a morl controller (``fixed`` with ``reward_weights``, or ``gdpo`` for
``normalize_then_sum``), so the diagnostics come with any existing script. The morl metrics (``weights/{name}``,
``cov/...``, ``alarm/...``, ``forecast/...``, the controller's own) go through TRL's logging beside its
``rewards/{name}/mean``; the controller's, the diagnostics' and the forecast's state are saved as
``morl_state.json`` (and ``morl_state.safetensors`` for the forecast's parameter snapshot) in every TRL checkpoint
and restored by ``train(resume_from_checkpoint=...)``.

Why this mechanism. TRL's ``GRPOTrainer`` is 3,400 lines that change every release; its smallest stable surface
for this job is two methods whose names, arguments and return values have stayed the same since TRL 0.20:

- ``_calculate_rewards(inputs, prompts, completions, completion_ids_list)`` returns the ``[N, M]`` reward matrix,
  gathered over processes. It is only read here (TRL's own runs unchanged);
- ``_generate_and_score_completions(inputs)`` returns the batch dict the loss consumes; TRL's own runs first, and
  exactly one entry, ``advantages``, is replaced by the controller's.

The loss (``compute_loss``), where TRL adds loss types, masks and entropy control release after release, is not
touched, which is also why gradient-level controllers (one loss per objective inside the update) are refused. What
happens after the optimizer step (CTWA learns from the clipped advantage weights under the updated policy, the
diagnostics measure) runs in a ``TrainerCallback``'s ``on_step_end``, the checkpoint state in its ``on_save``, and
its restoration in ``train()``: public transformers API. A callback alone could not do the job (callbacks never see
the batch or the advantages), and ``reward_weights`` cannot (they are fixed numbers). The private members read
besides — ``_get_per_token_logps_and_entropies`` (log-probs exactly as TRL's loss computes them: its temperature,
its fused head), ``_metrics``, ``_logs``, ``_step``, ``num_generations``, ``reward_func_names`` — are pinned by
``tests/test_trl_integration.py``.

The math is morl's own: :class:`morl.integrations.host.HostedStep` calls the controller, the estimator, the
policy loss's clip rule, the diagnostics and the forecast as :class:`morl.trainer.Trainer` does; this module only
moves TRL's tensors into morl's records (:func:`rollout_from_trl`).

Supported: TRL 0.20 to 1.x (``pip install "morl[trl]"``), text models, any number of processes (each runs morl's
math on the whole gathered batch, as morl's own trainer does). Under sharded parameters (FSDP, ZeRO-3) the forecast
is off and a controller that learns from it is refused. The evaluation loss keeps TRL's advantages: the controller
learns from training batches only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOTrainer

from morl.algos import GRPO
from morl.algos.loss import LOSS_TYPES
from morl.batch import Batch
from morl.callbacks import Stateful
from morl.components import Component, RecipeError
from morl.controllers.base import WeightController
from morl.diagnostics import Diagnostics, make_diagnostics
from morl.integrations.host import HostedStep, check_hostable
from morl.rewards import objective_name
from morl.stages import Need, Scored, Weighted
from morl.state import capture_parts, restore_parts

__all__ = [
    "STATE_FILE",
    "MorlGRPOTrainer",
    "TRLReward",
    "advantage_of",
    "check_settings",
    "clip_rule",
    "rollout_from_trl",
    "trl_reward",
]

logger = logging.getLogger(__name__)

STATE_FILE = "morl_state.json"  # in each TRL checkpoint folder
TENSOR_FILE = "morl_state.safetensors"  # the forecast's parameter snapshot, when there is one
_MULTIMODAL = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "spatial_shapes")


def rollout_from_trl(inputs: dict[str, Any], group_size: int) -> Batch:
    """TRL's batch dict (what ``_generate_and_score_completions`` returns) as morl's rollout record.

    ``input_ids`` are TRL's left-padded prompt and right-padded completion; ``completion_mask`` is the loss's mask
    (TRL's ``completion_mask``, times its ``tool_mask`` when tools ran); ``old_logprobs`` TRL's
    ``old_per_token_logps`` (absent when TRL did not need them); ``sampling_logprobs`` the vLLM engine's, with the
    tokens vLLM could not score set to the trainer's (no correction, as TRL does). Texts are left empty: morl's math
    reads none.
    """
    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    loss_mask = completion_mask * inputs["tool_mask"] if inputs.get("tool_mask") is not None else completion_mask
    old = inputs.get("old_per_token_logps")
    sampling = inputs.get("sampling_per_token_logps")
    if sampling is not None and old is not None:
        sampling = torch.where(torch.isnan(sampling), old, sampling)
    n = prompt_ids.shape[0]
    return Batch(
        prompts=[""] * n,
        completions=[""] * n,
        columns={},
        group_size=group_size,
        input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, completion_mask], dim=1),
        completion_mask=loss_mask,
        prompt_width=prompt_ids.shape[1],
        old_logprobs=old,
        sampling_logprobs=sampling,
    )


class TRLReward:
    """A morl reward (:class:`morl.rewards.RewardFn` or any reward callable) as TRL calls it: named by its objective
    (TRL logs ``rewards/{name}/mean``), given ``completion_lengths`` in tokens from TRL's ``completion_ids``, the
    text of a conversational completion, and its state saved in TRL's checkpoints by :class:`MorlGRPOTrainer`."""

    def __init__(self, reward: Any) -> None:
        self.reward = reward
        self.__name__ = objective_name(reward)

    def __repr__(self) -> str:
        return f"trl_reward({self.reward!r})"

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        ids = kwargs.get("completion_ids")
        if ids is not None and "completion_lengths" not in kwargs:
            kwargs["completion_lengths"] = [len(x) for x in ids]
        return self.reward(prompts=[_text(p) for p in prompts], completions=[_text(c) for c in completions], **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self.reward.state_dict() if isinstance(self.reward, Stateful) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.reward, Stateful):
            self.reward.load_state_dict(state)


def trl_reward(reward: Any) -> TRLReward:
    """``reward`` wrapped for ``GRPOTrainer(reward_funcs=[...])`` (see :class:`TRLReward`).

    Example:
        >>> from morl.rewards import Conciseness
        >>> fn = trl_reward(Conciseness())
        >>> fn.__name__, fn(prompts=["p", "p"], completions=["ab", "abcd"], completion_ids=[[1], [1, 2, 3]])
        ('conciseness', [1.0, 0.0])
    """
    return TRLReward(reward)


def _text(value: Any) -> Any:
    """The text of a chat message list (its last message), else the value itself."""
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return value[-1]["content"]
    return value


# ---- TRL's settings, as morl's components ---------------------------------------------------------------------------


def advantage_of(config: Any) -> dict[str, Any]:
    """The morl advantage estimator that is TRL's ``scale_rewards`` (``group`` or True, ``none`` or False)."""
    scale = getattr(config, "scale_rewards", "group")
    if scale in (True, "group"):
        return {"name": "group_norm"}
    if scale in (False, "none"):
        return {"name": "group_norm", "scale": False}
    raise RecipeError(
        f"scale_rewards={scale!r} has no exact morl estimator: pass advantage=... to MorlGRPOTrainer, e.g. "
        "{'name': 'batch_whiten', 'center': 'none'} (group-centred scores divided by their batch spread)"
    )


def clip_rule(config: Any) -> GRPO:
    """morl's GRPO loss with TRL's clip range, ratio level and engine correction: what decides whether a token was
    clipped, for the clipped advantage weights. Its aggregation (``loss_type``) does not enter them."""
    low = float(config.epsilon)
    high = float(config.epsilon_high) if getattr(config, "epsilon_high", None) is not None else low
    correction, cap = "none", 3.0
    if getattr(config, "use_vllm", False) and getattr(config, "vllm_importance_sampling_correction", False):
        correction = getattr(config, "vllm_importance_sampling_mode", "token_truncate")
        limit = getattr(config, "vllm_importance_sampling_clip_max", None)
        limit = limit if limit is not None else getattr(config, "vllm_importance_sampling_cap", None)
        cap = float(limit) if limit is not None else 1e30
    return GRPO(
        clip_low=low,
        clip_high=high,
        loss_type=config.loss_type if config.loss_type in LOSS_TYPES else "grpo",
        importance_sampling_level=getattr(config, "importance_sampling_level", "token"),
        temperature=float(config.temperature),
        micro_batch_size=config.per_device_train_batch_size,
        max_completion_length=config.max_completion_length,
        importance_correction=correction,
        importance_cap=cap,
        log_entropy=False,
    )


def check_settings(
    config: Any,
    controller: WeightController | None,
    diagnostics: Diagnostics | None,
    advantage: Any = None,
) -> None:
    """Refuse a ``GRPOConfig`` whose settings the morl parts would silently override or could not honour: weights
    given to TRL and to a controller, an aggregation only a controller can do, a ``scale_rewards`` with no morl
    estimator, and, where the clipped advantage weights are needed, settings that change which tokens pass
    gradient in ways the clipped surrogate's rule does not know."""
    problems = []
    if controller is not None:
        if config.reward_weights is not None:
            problems.append(
                f"reward_weights={list(config.reward_weights)}: give the weights to the controller "
                "(e.g. {'name': 'fixed', 'weights': [...]}, or the controller's own initial weights)"
            )
        if getattr(config, "multi_objective_aggregation", "sum_then_normalize") == "normalize_then_sum":
            problems.append("multi_objective_aggregation='normalize_then_sum' is morl's controller {'name': 'gdpo'}")
    if problems:
        raise RecipeError(
            f"controller {controller.name!r} owns the weights and how the rewards combine, so these GRPOConfig "
            "settings would be silently ignored:\n  " + "\n  ".join(problems)
        )
    if advantage is None:
        advantage_of(config)
    needs = set(controller.needs if controller is not None else ()) | set(diagnostics.needs if diagnostics else ())
    if Need.CLIPPED_WEIGHTS not in needs:
        return
    if config.loss_type not in (*LOSS_TYPES, "luspo"):
        problems.append(f"loss_type={config.loss_type!r} (not the clipped surrogate)")
    if getattr(config, "delta", None) is not None:
        problems.append(f"delta={config.delta} (two-sided clipping)")
    if getattr(config, "top_entropy_quantile", 1.0) < 1.0:
        problems.append(f"top_entropy_quantile={config.top_entropy_quantile} (tokens masked by entropy)")
    if getattr(config, "off_policy_mask_threshold", None) is not None:
        problems.append(f"off_policy_mask_threshold={config.off_policy_mask_threshold} (sequences masked)")
    if clip_rule(config).config.importance_correction != "none" and getattr(
        config, "vllm_importance_sampling_clip_min", None
    ):
        problems.append("vllm_importance_sampling_clip_min (a lower bound morl's correction does not have)")
    if problems:
        raise RecipeError(
            f"{sorted(n.value for n in needs)}: the clipped advantage weight w = A·ρ·1[not clipped] under the "
            "updated policy follows the clipped surrogate's rule (epsilon, epsilon_high); these settings change "
            "which tokens pass gradient:\n  " + "\n  ".join(problems) + "\nLeave them at their defaults, or use a "
            "controller that does not need the clipped weights (ctwa with signal: forecast, lagrangian, gdpo) and "
            "diagnostics={'clipped_weights': 'auto'}"
        )


class _TRLPolicy:
    """What the forecast and the gradient diagnostics call on a policy (``model``, ``token_logprobs``), over a
    ``GRPOTrainer``: the log-probs are TRL's own (its sampling temperature, its forward), so ``temperature`` here is
    not applied a second time."""

    sharded = False

    def __init__(self, trainer: MorlGRPOTrainer) -> None:
        self._trainer = trainer

    @property
    def model(self) -> torch.nn.Module:
        return self._trainer.model

    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_width: int,
        temperature: float = 1.0,
        with_entropy: bool = False,
        group_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._trainer.completion_logprobs(
            input_ids, attention_mask, input_ids.shape[1] - prompt_width, with_entropy
        )


class MorlGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with a morl weight controller, diagnostics and the interference forecast.

    Takes every argument of ``GRPOTrainer``, and:

    Args:
        controller: a morl weight controller (name, spec such as ``{"name": "ctwa", ...}``, or instance), reward-
            or advantage-level. None: TRL's own weighting as a morl controller (``fixed`` with ``reward_weights``;
            ``gdpo`` for ``multi_objective_aggregation="normalize_then_sum"``). With a controller, leave
            ``reward_weights`` and ``multi_objective_aggregation`` unset: the controller owns the weights.
        diagnostics: morl's diagnostics (:class:`morl.diagnostics.DiagnosticsConfig`): True (defaults: covariances,
            alarms, the forecast every 5 steps), False, or a mapping of settings.
        advantage: a morl advantage estimator; None: from TRL's ``scale_rewards`` (``group``: ``group_norm``;
            ``none``: ``group_norm`` without scaling; ``batch`` has no exact morl twin and must be chosen here).
        scalarizer: for reward-level controllers (default ``linear``).

    A training step of morl is one generation batch here: the controller weighs it once, and learns once after
    the last optimizer step TRL takes on it (``steps_per_generation × num_iterations`` micro-steps). The state of
    the morl parts is ``self.morl`` (:class:`~morl.integrations.host.HostedStep`), e.g.
    ``trainer.morl.controller.u_``.
    """

    def __init__(
        self,
        *args: Any,
        controller: str | dict[str, Any] | Component | None = None,
        diagnostics: Any = True,
        advantage: str | dict[str, Any] | Component | None = None,
        scalarizer: str | dict[str, Any] | Component = "linear",
        **kwargs: Any,
    ) -> None:
        # what morl refuses is refused before TRL loads anything
        chosen = check_hostable(controller) if controller is not None else None
        diagnostics = make_diagnostics(diagnostics)
        config = kwargs.get("args", args[2] if len(args) > 2 else None)
        if config is not None:
            check_settings(config, chosen, diagnostics, advantage)
        super().__init__(*args, **kwargs)
        if chosen is None:
            chosen = check_hostable(self._trl_weighting())
        self.morl = HostedStep(
            chosen,
            list(self.reward_func_names),
            scalarizer=scalarizer,
            advantage=advantage if advantage is not None else advantage_of(self.args),
            algo=clip_rule(self.args),
            diagnostics=diagnostics,
            policy=_TRLPolicy(self),
            forecast=not self._sharded(),
        )
        self._morl_rewards: torch.Tensor | None = None
        self._morl_inputs: dict[str, Any] | None = None
        self.add_callback(_MorlCallback(self))

    def _trl_weighting(self) -> dict[str, Any]:
        """TRL's own weighting as a morl controller: its ``reward_weights`` (1 each when unset, environments'
        rewards included), summed then normalised, or normalised then summed (GDPO)."""
        weights = [float(w) for w in self.reward_weights]
        if getattr(self.args, "multi_objective_aggregation", "sum_then_normalize") == "normalize_then_sum":
            return {"name": "gdpo", "weights": weights}
        return {"name": "fixed", "weights": weights}

    def _sharded(self) -> bool:
        if getattr(self, "is_fsdp_enabled", False):
            return True
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return plugin is not None and plugin.zero_stage == 3

    # ---- the two TRL methods this class extends ---------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._morl_rewards = rewards
        return rewards

    def _generate_and_score_completions(self, inputs):
        self._morl_rewards = None
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output  # evaluation keeps TRL's advantages: the controller learns from training batches only
        if self._morl_rewards is None:
            raise RuntimeError(
                "TRL's _generate_and_score_completions did not call _calculate_rewards: this TRL version is not one "
                "morl.integrations.trl supports (morl[trl] lists them)"
            )
        old = None
        if self.morl.wants_new_logprobs and output.get("old_per_token_logps") is None:
            old = self._sampling_logprobs(output)  # morl's record only: TRL's loss keeps what it had
        batch = self._gathered_rollout(output, old)
        rewards = self._morl_rewards.to(batch.completion_mask.device)
        weighted = self.morl.weigh(Scored(rollout=batch, rewards=rewards, objectives=self.morl.objectives))
        rows = self._local_rows(output["advantages"].shape[0])
        output["advantages"] = weighted.advantages[rows].to(output["advantages"])
        self._log_weighting(weighted)
        self._morl_inputs = output
        return output

    # ---- glue: TRL's tensors as morl's records ------------------------------------------------------------------

    def completion_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropies) of the last ``logits_to_keep`` tokens, as TRL's loss computes them."""
        if logits_to_keep == 0:
            empty = input_ids.new_zeros((input_ids.shape[0], 0), dtype=torch.float32)
            return empty, (empty if with_entropy else None)
        out = self._get_per_token_logps_and_entropies(
            self.model,
            input_ids,
            attention_mask,
            logits_to_keep,
            batch_size=self.args.per_device_train_batch_size,
            compute_entropy=with_entropy,
        )
        return out[0], out[1]

    def _local_logprobs(self, inputs: dict[str, Any]) -> torch.Tensor:
        """This process's rows of TRL's batch dict under the current parameters, no gradient, 0 off the mask."""
        multimodal = [key for key in _MULTIMODAL if inputs.get(key) is not None]
        if multimodal:
            raise NotImplementedError(
                f"morl's clipped weights and forecast run text models only; this batch has {multimodal}"
            )
        local = rollout_from_trl(inputs, self.num_generations)
        with torch.no_grad():
            logp, _ = self.completion_logprobs(
                local.input_ids, local.attention_mask, local.completion_mask.shape[1], with_entropy=False
            )
        return logp * local.completion_mask

    def _sampling_logprobs(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The sampling policy's log-probs, when TRL did not compute them (one aligned optimizer step per
        generation: its loss then uses the current ones, equal before the update)."""
        return self._local_logprobs(inputs)

    def _gathered_rollout(self, inputs: dict[str, Any], old: torch.Tensor | None) -> Batch:
        """The whole generation batch (every process's rows, in TRL's order) as morl's record; ``old`` replaces
        the missing ``old_per_token_logps``."""
        if old is not None:
            inputs = {**inputs, "old_per_token_logps": old}
        if self.accelerator.num_processes > 1:
            gathered = {}
            for key in (
                "prompt_ids",
                "prompt_mask",
                "completion_ids",
                "completion_mask",
                "tool_mask",
                "old_per_token_logps",
                "sampling_per_token_logps",
            ):
                if inputs.get(key) is not None:
                    gathered[key] = self._gather_rows(inputs[key], pad_first=key.startswith("prompt"))
            inputs = gathered
        return rollout_from_trl(inputs, self.num_generations)

    def _gather_rows(self, tensor: torch.Tensor, pad_first: bool = False) -> torch.Tensor:
        """Every process's rows, in process order; per-token tensors padded to the widest (prompts on the left)."""
        if self.accelerator.num_processes == 1:
            return tensor
        if tensor.dim() > 1:
            tensor = self.accelerator.pad_across_processes(tensor, dim=1, pad_index=0, pad_first=pad_first)
        return self.accelerator.gather(tensor)

    def _local_rows(self, n: int) -> slice:
        """This process's rows of the gathered batch (TRL's ``process_slice``)."""
        start = self.accelerator.process_index * n
        return slice(start, start + n)

    def _log_weighting(self, weighted: Weighted) -> None:
        """TRL's ``reward`` is the score the controller trained on (morl's meaning), and the completions table
        shows the advantages TRL's loss used."""
        metrics = self._metrics["train"]
        scores = weighted.scores.detach().float()
        if metrics.get("reward"):
            metrics["reward"][-1] = float(torch.nanmean(scores))
        if metrics.get("reward_std") and scores.numel() > 1:
            metrics["reward_std"][-1] = float(scores[~torch.isnan(scores)].std())
        logged = self._logs.get("advantages") if isinstance(self._logs, dict) else None
        if logged is not None:
            for _ in range(min(len(logged), weighted.advantages.shape[0])):
                logged.pop()
            logged.extend(weighted.advantages.tolist())

    # ---- after the update, checkpoints --------------------------------------------------------------------------

    def _morl_after_update(self) -> None:
        """After an optimizer step that ends the generation batch: the controller learns, the metrics are logged."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        if not self.morl.pending or self._step % generate_every != 0:
            return
        new = None
        if self.morl.wants_new_logprobs:
            new = self._gather_rows(self._local_logprobs(self._morl_inputs))
        self._morl_inputs = None
        for key, value in self.morl.observe_update(new).items():
            self._metrics["train"][key].append(float(value))

    def _morl_parts(self) -> dict[str, Any]:
        parts = dict(self.morl.stateful_parts())
        for name, reward in zip(self.reward_func_names, self.reward_funcs):
            if isinstance(reward, Stateful) and not isinstance(reward, torch.nn.Module):
                parts[f"reward/{name}"] = reward
        return parts

    def save_morl_state(self, folder: str | os.PathLike) -> None:
        """Write the morl parts' state into a checkpoint folder (``morl_state.json``, and the forecast's parameter
        snapshot in ``morl_state.safetensors``)."""
        folder = Path(folder)
        state = {"format": 1, "updates": self.morl.updates_, "parts": capture_parts(self._morl_parts())}
        (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
        window = self.morl.forecast_window
        tensors = window.tensor_state_dict() if window is not None else {}
        if tensors:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / TENSOR_FILE))

    def load_morl_state(self, folder: str | os.PathLike) -> None:
        """Restore what :meth:`save_morl_state` wrote; a checkpoint without it (a plain ``GRPOTrainer``'s) starts
        the morl parts fresh, with a warning."""
        folder = Path(folder)
        path = folder / STATE_FILE
        if not path.is_file():
            logger.warning("%s has no %s: the morl controller and diagnostics start fresh", folder, STATE_FILE)
            return
        saved = json.loads(path.read_text())
        restore_parts(self._morl_parts(), saved["parts"])
        self.morl.updates_ = int(saved["updates"])
        window = self.morl.forecast_window
        if window is not None and (folder / TENSOR_FILE).is_file():
            from safetensors.torch import load_file

            window.load_tensor_state_dict(load_file(str(folder / TENSOR_FILE), device=str(self.accelerator.device)))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)  # None: transformers raises its own error
        if isinstance(checkpoint, (str, os.PathLike)):
            self.load_morl_state(checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)


class _MorlCallback(TrainerCallback):
    """The public hooks of transformers' loop: start, after each optimizer step, after each checkpoint."""

    def __init__(self, trainer: MorlGRPOTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.morl.begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._morl_after_update()

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            self.trainer.save_morl_state(folder)
