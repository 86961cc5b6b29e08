"""The policy: a causal LM and its tokenizer, loaded from any Hugging Face directory or hub name.

LoRA and QLoRA (``pip install "morl[lora]"``, through peft). ``policy: {lora: {r: 16, alpha: 32}}`` wraps the model
with low-rank adapters: only they train (the optimizer takes the ``requires_grad`` parameters), so the optimizer
state is a few MB instead of twice the model. What changes with adapters:

- **the KL reference is the base with the adapters disabled**, the same module run under peft's
  ``disable_adapter()`` (:class:`AdapterReference`): no second copy of the model in memory;
- **checkpoints and the run's final ``model/`` hold the adapter** (``adapter_model.safetensors`` and
  ``adapter_config.json``, which names the base); ``Policy.from_pretrained`` and ``morl eval --checkpoint`` load such
  a directory as base + adapter. ``policy.lora.merge_on_save: true`` also writes ``RUN_DIR/model/merged/``, the base
  with the adapters merged in: a plain Hugging Face model that ``AutoModelForCausalLM`` (or vLLM) loads alone;
- :meth:`Policy.named_full_parameters` (the weights pushed to a vLLM engine) yields merged weights ``W + s·B·A``
  under the base model's names, computed beside the training weights, which stay untouched.

``policy.load_in_4bit: true`` (QLoRA) loads the frozen base in 4-bit NF4 through bitsandbytes (``pip install
bitsandbytes``, CUDA GPU only) and trains bf16/fp32 adapters on top; it needs ``lora``.

Example:
    >>> policy = Policy.from_pretrained("tinymath", lora={"r": 8, "alpha": 16})  # doctest: +SKIP
    >>> policy  # doctest: +SKIP
    Policy(model='tinymath', parameters=..., trainable=... (LoRA r=8))
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import inspect
import json
import math
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from morl.integrity import follow_umask, pickled_weights, safetensors_problem, unpickling_reason, zip_problem
from morl.shared_forward import completion_logprobs, shared_prompt_logprobs

if TYPE_CHECKING:
    from morl.batch import Batch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_CONFIG = "adapter_config.json"  # what peft writes beside the adapter weights: marks an adapter directory
MERGED = "merged"  # the merged export, inside the saved model directory


def load_options(use_kernels: bool = False) -> dict[str, Any]:
    """Keyword arguments every ``from_pretrained`` of a model in morl passes.

    transformers >= 5.25 swaps a loaded model's layers for compiled ones downloaded from the Hugging Face Hub (its
    ``kernels`` integration) unless told not to, and does it again on each ``train()``/``eval()``. Offline machines
    and most GPU clusters cannot download them, and a changed layer changes the numbers, so morl asks for the plain
    torch layers unless ``policy.use_kernels`` opts in. The keyword exists since transformers 4.56.
    """
    return {"use_kernels": use_kernels}


class LoraConfig(BaseModel):
    """Low-rank adapters (Hu et al. 2021, https://arxiv.org/abs/2106.09685): each adapted weight computes
    ``W x + (alpha / r)·B A x`` with ``A`` [r, in] random and ``B`` [out, r] zero at the start, so the initial policy
    is the base model and only ``A`` and ``B`` train."""

    # every float finite: an infinite alpha passes `gt=0` and scales the adapters' update to inf
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    r: int = Field(16, gt=0, description="rank of each adapter's update B·A")
    alpha: float = Field(32.0, gt=0, description="the update is scaled by alpha / r (rescale lr if you change r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input while training")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="modules to adapt: all-linear (every linear layer but the output head), a list of module "
        "names (e.g. [q_proj, v_proj]) or a regex on the full module names",
    )
    merge_on_save: bool = Field(
        False,
        description="also write the final model with the adapters merged into the base (RUN_DIR/model/merged), a "
        "plain Hugging Face model; checkpoints and RUN_DIR/model hold the adapter either way",
    )
    seed: int = Field(0, description="seed of the adapters' random start (A), so runs of one recipe start alike")


class PolicyConfig(BaseModel):
    """``model`` is ``tinymath`` or ``tinysort`` (the shipped models), a local directory or a hub name."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "tinymath", description="tinymath or tinysort (shipped), a local model directory or a hub model name"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weight dtype; bfloat16 halves memory on a GPU"
    )
    device: str = Field("cpu", description="torch device; cuda means this process's GPU under a launcher")
    chat_template: bool = Field(False, description="format prompts with the tokenizer's chat template (chat models)")
    trust_remote_code: bool = Field(
        False, description="allow the model's own code from the hub (only for trusted models)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, slower steps"
    )
    lora: LoraConfig | None = Field(
        None,
        description='train LoRA adapters (peft, pip install "morl[lora]") instead of every weight; {} for the '
        "defaults. The KL reference is then the base with adapters disabled, not a copy",
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: the frozen base in 4-bit NF4 (pip install bitsandbytes; CUDA GPU); needs lora"
    )
    use_kernels: bool = Field(
        False,
        description="let transformers replace layers with compiled kernels downloaded from the Hugging Face Hub "
        "(the kernels package; needs internet on a GPU); off: the plain torch layers, offline",
    )

    @model_validator(mode="after")
    def _quantized_base_needs_adapters(self) -> PolicyConfig:
        if self.load_in_4bit and self.lora is None:
            raise ValueError("policy.load_in_4bit: a 4-bit base cannot train on its own; add policy.lora (QLoRA)")
        return self


class Policy:
    """Model + tokenizer, with the one computation every algorithm needs: per-token log-probs."""

    def __init__(self, model: torch.nn.Module, tokenizer, config: PolicyConfig | None = None) -> None:
        self.model = model  # the Hugging Face model: generate, save, parameters
        self.tokenizer = tokenizer
        self.config = config or PolicyConfig()
        # set by :meth:`prepare` under data parallelism: the wrapped module that training forward passes go
        # through (DDP, FSDP, DeepSpeed), and the accelerator that owns it
        self.wrapped: torch.nn.Module | None = None
        self.accelerator: Any = None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    @classmethod
    def from_pretrained(cls, model: str = "tinymath", **options) -> Policy:
        """Load ``model`` (see :class:`PolicyConfig`; ``lora={...}`` adds fresh adapters). A directory holding a
        saved adapter (a LoRA run's ``model/`` or a checkpoint's) loads as its base plus that adapter, trainable."""
        from transformers import AutoTokenizer

        config = PolicyConfig(model=model, **options)
        path = resolve_model_path(config.model)
        _check_model_source(config.model, path, config.trust_remote_code)
        adapter = Path(path) if (Path(path) / ADAPTER_CONFIG).is_file() else None
        base = _adapter_base(adapter) if adapter is not None else path
        if adapter is not None:
            _check_model_source(base, base, config.trust_remote_code)
        has_tokenizer = adapter is None or (adapter / "tokenizer_config.json").is_file()
        tokenizer_path = path if has_tokenizer else base
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=config.trust_remote_code)
        except (ValueError, TypeError, KeyError) as err:  # no tokenizer files: transformers' error names none
            raise ModelLoadError(f"{tokenizer_path}: no usable tokenizer ({type(err).__name__}: {err})") from None
        net = _load_base(base, config)
        if adapter is not None:
            net = _peft().PeftModel.from_pretrained(net, str(adapter), is_trainable=True)
            net.active_peft_config.base_model_name_or_path = base  # where it is here (peft reads it when saving)
        elif config.lora is not None:
            net = add_adapters(net, config.lora)
        if not config.load_in_4bit:
            net = net.to(resolve_device(config.device))
        return cls(net, tokenizer, config)

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        if not self.has_adapters:
            return f"Policy(model={self.config.model!r}, parameters={params:,})"
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        rank = getattr(self.model.active_peft_config, "r", "?")
        return f"Policy(model={self.config.model!r}, parameters={params:,}, trainable={trainable:,} (LoRA r={rank}))"

    @property
    def has_adapters(self) -> bool:
        """The model is a peft model with adapters: only they train, and the base is the KL reference."""
        return is_peft_model(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def base_model_path(self) -> str:
        """Where the weights an inference engine serves come from: the model's folder or hub name, or for a policy
        loaded from a saved adapter the base that adapter was trained on (the engine receives merged weights)."""
        path = resolve_model_path(self.config.model)
        return _adapter_base(Path(path)) if (Path(path) / ADAPTER_CONFIG).is_file() else path

    def kl_reference(self) -> Policy:
        """The reference policy of the KL term: the base with adapters disabled when the policy has adapters (the
        same module, no copy), else a frozen copy of the initial weights."""
        return AdapterReference(self) if self.has_adapters else self.frozen_copy()

    def frozen_copy(self) -> Policy:
        """A reference policy for the KL term: same weights, no gradients."""
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return Policy(ref, self.tokenizer, self.config)

    def format_prompt(self, prompt: str, messages: list[dict[str, Any]] | None = None) -> str:
        """The text the model continues: the prompt, or with ``chat_template`` the tokenizer's chat template
        applied to the row's chat ``messages`` (when the data has them, e.g. verl parquet) or to one user turn."""
        if not self.config.chat_template:
            return prompt
        if self.tokenizer.chat_template is None:
            raise ValueError(
                f"policy.chat_template is true but the tokenizer of {self.config.model!r} has no chat template; "
                "set policy.chat_template: false for a base model without one"
            )
        turns = messages if messages else [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(list(turns), add_generation_prompt=True, tokenize=False)

    # ---- data parallelism (morl.distributed) --------------------------------------------------------------

    def prepare(self, accelerator: Any, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Wrap the model for data-parallel training (DDP, FSDP or DeepSpeed, as the launcher's accelerate
        config says) and return the prepared optimizer. Make the reference copy before calling this."""
        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and plugin.deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1  # no DataLoader to infer it from
        self.wrapped, optimizer = accelerator.prepare(self.model, optimizer)
        self.accelerator = accelerator
        return optimizer

    @property
    def sharded(self) -> bool:
        """Parameters split across processes (FSDP, DeepSpeed ZeRO-3): every forward pass is a collective."""
        if self.accelerator is None:
            return False
        from accelerate.utils import DistributedType

        state = self.accelerator.state
        if state.distributed_type == DistributedType.FSDP:
            return True
        plugin = getattr(state, "deepspeed_plugin", None)
        return plugin is not None and plugin.zero_stage == 3

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients so that, across processes, they are the gradient of the **sum** of every
        process's ``loss`` (DDP and FSDP average over processes, so the loss is scaled by their number)."""
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss * self.accelerator.num_processes)

    def no_sync(self, skip: bool) -> contextlib.AbstractContextManager:
        """While ``skip``, backward passes accumulate locally without the cross-process gradient reduction."""
        if self.accelerator is None or not skip:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self.wrapped)

    def clip_grad_norm(self, max_norm: float | None) -> float:
        """Clip the (reduced) gradients to ``max_norm`` (None: no clipping); returns their total norm."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        limit = max_norm if max_norm is not None else math.inf
        if self.accelerator is None:
            return float(torch.nn.utils.clip_grad_norm_(params, limit))
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), limit)
        return 0.0 if norm is None else float(norm)  # DeepSpeed clips inside its engine and may not report one

    def _forward_module(self) -> torch.nn.Module:
        return self.wrapped if self.wrapped is not None else self.model

    def named_full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of every weight, whole even when sharded (a collective then: call on every
        process), with the Hugging Face names; for pushing weights to a rollout engine.

        With adapters: the base model's names and **merged** weights ``W + (alpha/r)·B·A`` (a 4-bit base
        dequantized first), computed as new tensors: the engine serves the base architecture, and the training
        model is left as it is."""
        if self.has_adapters:
            yield from base_weights(self.model, merged=True)
            return
        for name, tensor in self.model.state_dict().items():
            yield name, _whole(tensor)

    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_width: int,
        temperature: float = 1.0,
        with_entropy: bool = False,
        group_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs ``[N, L]`` of the completion tokens (and their entropies) under this policy.

        ``group_size`` K > 1 says that rows come in groups of K completions of one prompt, as rollouts do: each
        prompt then goes through the model once and its KV cache serves its K completions, and the completions skip
        the padding after their ends (:mod:`morl.shared_forward`): the same log-probs, with the prompt's share of the
        compute divided by K; 0 after a row's end, where the completion mask is 0.
        """
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp_min(0)
        if self._can_share_prompts(input_ids, attention_mask, prompt_width, group_size):
            cache_name = "cache" if "cache" in _forward_arguments(self.model) else "past_key_values"
            return shared_prompt_logprobs(
                self.model,
                cache_name,
                input_ids,
                attention_mask,
                position_ids,
                prompt_width,
                group_size,
                temperature,
                with_entropy,
            )
        # logits of the completion's positions only: the LM head over the prompt is wasted work (and memory)
        completion = input_ids.shape[1] - prompt_width
        keep = {"logits_to_keep": completion + 1} if "logits_to_keep" in _forward_arguments(self.model) else {}
        model = self._forward_module()
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **keep).logits
        logits = logits[:, logits.shape[1] - completion - 1 : -1]
        return completion_logprobs(logits, input_ids[:, prompt_width:], temperature, with_entropy)

    def prompt_cache(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, k: int = 1, new_tokens: int = 0
    ) -> dict[str, Any]:
        """For ``generate`` on K copies of each of these P prompts (left-padded, ``[P, W]``): the KV cache of all
        but their last token, computed once per prompt and repeated K times, as generate's keyword argument;
        ``{}`` where that does not apply (sharded weights, a model without a cache argument or with its own cache
        implementation). The prefill then costs P rows instead of P·K, and the cache has room for ``new_tokens``
        more, so decoding writes each token's keys and values in place instead of copying the whole cache."""
        arguments = _forward_arguments(self.model)
        names = [name for name in ("cache", "past_key_values") if name in arguments]
        generation = getattr(self.model, "generation_config", None)
        if prompt_ids.shape[1] < 2 or self.sharded or not names or "logits_to_keep" not in arguments:
            return {}
        if getattr(generation, "cache_implementation", None) is not None:
            return {}
        head = slice(None, -1)  # generate runs the last token itself, to get the first sampling distribution
        position_ids = (prompt_mask.cumsum(dim=1) - 1).clamp_min(0)
        with torch.no_grad():
            out = self.model(
                input_ids=prompt_ids[:, head],
                attention_mask=prompt_mask[:, head],
                position_ids=position_ids[:, head],
                use_cache=True,
                logits_to_keep=1,
            )
        cache = getattr(out, names[0])
        if k > 1:
            cache.batch_repeat_interleave(k)
        _preallocate(cache, 1 + new_tokens)
        return {names[0]: cache}

    def _can_share_prompts(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int, group_size: int
    ) -> bool:
        """Prompt sharing needs groups of identical prompts, a completion of 2+ tokens, a model whose forward takes
        a KV cache, and a plain model: under DDP/FSDP (one forward pass per backward) or gradient checkpointing
        (which recomputes the cache) every row goes through the model whole."""
        n, width = input_ids.shape
        if group_size <= 1 or n % group_size or prompt_width < 1 or width - prompt_width < 2:
            return False
        if self.wrapped is not None or any(getattr(m, "gradient_checkpointing", False) for m in self.model.modules()):
            return False
        arguments = _forward_arguments(self.model)
        if "logits_to_keep" not in arguments or not {"cache", "past_key_values"} & arguments:
            return False
        for x in (input_ids, attention_mask):
            prompts = x[:, :prompt_width].view(n // group_size, group_size, prompt_width)
            if not torch.equal(prompts, prompts[:, :1].expand_as(prompts)):
                return False
        return True

    def save(self, path: str | Path, merged: bool | None = None) -> Path:
        """Hugging Face format. Sharded (FSDP, ZeRO-3): a collective that every process calls; process 0 writes.

        With adapters ``path`` holds the adapter (``adapter_model.safetensors``, ``adapter_config.json``, which names
        the base) and the tokenizer; ``merged`` (default ``policy.lora.merge_on_save``) also writes ``path/merged``,
        the base with the adapters merged in, a plain model that needs neither peft nor the base to load.
        """
        path = Path(path)
        write = not self.sharded or self.accelerator.is_main_process
        if self.sharded:
            state = self.accelerator.get_state_dict(self.wrapped)
            if write:
                self.model.save_pretrained(path, state_dict=state)
        else:
            self.model.save_pretrained(path)
        if write:
            self.tokenizer.save_pretrained(path)
            if self.has_adapters:
                _name_base(path, self.config.model)
        if merged is None:
            merged = self.config.lora is not None and self.config.lora.merge_on_save
        if merged and self.has_adapters:
            self._save_merged(path / MERGED, write=write)
        if write:
            follow_umask(path)
        return path

    def _save_merged(self, path: Path, write: bool) -> None:
        """The merged weights in a plain model of the base's class, built on the meta device so that only the
        adapted layers' merged weights take new memory (the others are the live tensors)."""
        from transformers import AutoModelForCausalLM

        weights = dict(base_weights(self.model, merged=True))  # a collective when sharded: every process
        if not write:
            return
        base = self.model.get_base_model()
        config = copy.deepcopy(base.config)
        if hasattr(config, "quantization_config"):  # a QLoRA base: the export holds dequantized weights
            del config.quantization_config
        dtype = DTYPES[self.config.dtype] if self.config.load_in_4bit else None
        if dtype is not None:
            weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
            config.dtype = self.config.dtype
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, trust_remote_code=self.config.trust_remote_code)
        plain.load_state_dict(weights, strict=True, assign=True)
        plain.generation_config = copy.deepcopy(base.generation_config)
        plain.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


class AdapterReference(Policy):
    """The KL reference of a LoRA policy: the policy's own model with its adapters disabled (peft's
    ``disable_adapter()``), i.e. the frozen base, with no copy of any weight. It follows the policy's data-parallel
    wrapper, so it also runs where the weights are sharded."""

    def __init__(self, policy: Policy) -> None:
        if not policy.has_adapters:
            raise ValueError("AdapterReference needs a policy with adapters (policy.lora)")
        self.policy = policy
        self.tokenizer = policy.tokenizer
        self.config = policy.config

    def __repr__(self) -> str:
        return f"AdapterReference(base of {self.policy!r})"

    @property  # type: ignore[override]
    def model(self) -> torch.nn.Module:
        return self.policy.model

    @property  # type: ignore[override]
    def wrapped(self) -> torch.nn.Module | None:
        return self.policy.wrapped

    @property  # type: ignore[override]
    def accelerator(self) -> Any:
        return self.policy.accelerator

    @property
    def has_adapters(self) -> bool:
        return False  # it computes, fingerprints and exports the base

    def token_logprobs(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad(), self.policy.model.disable_adapter():
            return super().token_logprobs(*args, **kwargs)

    def named_full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from base_weights(self.policy.model, merged=False, dequantize=True)

    def frozen_copy(self) -> Policy:
        raise NotImplementedError("the adapter-disabled reference is a view of the policy; copy the policy instead")

    def save(self, path: str | Path, merged: bool | None = None) -> Path:
        raise NotImplementedError(
            "the adapter-disabled reference is the policy's frozen base: reload it from policy.model"
        )


def batch_logprobs(policy: Any, batch: Batch, temperature: float, micro_batch_size: int | None = None) -> torch.Tensor:
    """Completion log-probs ``[N, L]`` of a batch (0 off the completion mask) under ``policy`` (a :class:`Policy`,
    or any object with its ``token_logprobs``), in chunks of ``micro_batch_size`` rows (memory); no gradient. A
    chunk that holds whole prompt groups runs each prompt once for its K completions."""
    size = micro_batch_size or batch.size
    parts = []
    with torch.no_grad():
        for start in range(0, batch.size, size):
            rows = slice(start, start + size)
            whole_groups = start % batch.group_size == 0 and size % batch.group_size == 0
            logp, _ = policy.token_logprobs(
                batch.input_ids[rows],
                batch.attention_mask[rows],
                batch.prompt_width,
                temperature,
                group_size=batch.group_size if whole_groups else 1,
            )
            parts.append(logp * batch.completion_mask[rows])
    return torch.cat(parts)


# ---- adapters (peft) ----------------------------------------------------------------------------------------------


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError('policy.lora needs peft: pip install "morl[lora]" (or pip install "peft>=0.13")') from None
    return peft


def is_peft_model(model: torch.nn.Module) -> bool:
    """A peft model (checked without importing peft, which is optional)."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def add_adapters(model: torch.nn.Module, config: LoraConfig) -> torch.nn.Module:
    """``model`` wrapped by peft with fresh LoRA adapters (every other weight frozen). The adapters' random start
    is drawn from ``config.seed`` without touching the global random streams."""
    peft = _peft()
    lora = peft.LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        return peft.get_peft_model(model, lora)


def _name_base(adapter: Path, model: str) -> None:
    """Record the base as the recipe names it ("tinymath", a hub name) rather than the local path peft wrote, so the
    adapter still finds its base on another machine; a policy loaded from an adapter keeps what that one recorded."""
    source = Path(resolve_model_path(model))
    if (source / ADAPTER_CONFIG).is_file():
        name = json.loads((source / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    elif model in EMBEDDED_MODELS or not source.is_dir():
        name = model
    else:
        return
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = name
    (adapter / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _adapter_base(adapter: Path) -> str:
    """The base model a saved adapter was trained on, as peft recorded it."""
    base = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter / ADAPTER_CONFIG} does not name its base model (base_model_name_or_path)")
    return resolve_model_path(base)


class ModelLoadError(OSError):
    """``policy.model`` names no causal language model that can be loaded: no such folder, an empty or
    tokenizer-only one, no weights, or a model of another kind (BERT loads, then fails inside generation).

    An ``OSError`` because that is what transformers raises for a model it cannot find, so callers that already
    report those report these too."""


#: Weight files a Hugging Face model directory may hold (one of them, or their shards, must be there).
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "tf_model.h5", "flax_model.msgpack")


def _check_model_source(model: str, path: str, trust_remote_code: bool) -> None:
    """Before any weight loads: the folder exists and holds a model, and its config is a causal language model.

    A hub name (``org/name``, ``gpt2``) that is not a local folder is left to transformers, which downloads or
    reports it; a path that is not a hub name must exist (transformers would call it a malformed repo id).
    """
    local = Path(path)
    if not local.exists():
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", model) or model.endswith(".."):
            raise ModelLoadError(
                f"policy.model={model!r}: no such directory {local}; give a model directory (config.json and "
                "weights, as save_pretrained writes) or a Hugging Face hub name such as 'Qwen/Qwen2.5-0.5B-Instruct'"
            )
    elif not local.is_dir():
        raise ModelLoadError(f"policy.model={model!r}: {local} is a file; give the model's directory")
    elif (local / ADAPTER_CONFIG).is_file():
        return  # an adapter: its base is checked in turn
    else:
        present = sorted(p.name for p in local.iterdir())
        shown = ", ".join(present[:8]) + (", ..." if len(present) > 8 else "") if present else "it is empty"
        if not (local / "config.json").is_file():
            raise ModelLoadError(
                f"policy.model={model!r}: {local} holds no model: no config.json ({shown}); expected a Hugging Face "
                "causal LM directory (config.json, weights, tokenizer), as save_pretrained or a run's model/ writes"
            )
        if not any(any(local.glob(pattern)) for pattern in _WEIGHT_GLOBS):
            raise ModelLoadError(
                f"policy.model={model!r}: {local} has a config.json but no weights ({shown}); expected "
                "model.safetensors (or its shards, or pytorch_model.bin)"
            )
        for weights in sorted(local.glob("*.safetensors")):  # a header read each: a truncated copy fails here
            problem = safetensors_problem(weights)
            if problem is not None:
                raise ModelLoadError(f"policy.model={model!r}: {weights}: {problem}")
        for weights in sorted(local.glob("pytorch_model*.bin")):  # the zip directory at the end of each
            problem = zip_problem(weights)
            if problem is not None:
                raise ModelLoadError(f"policy.model={model!r}: {weights}: {problem}")
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as err:  # an unknown model_type, a config.json that is not a model config
        raise ModelLoadError(f"policy.model={model!r}: unreadable config.json ({err})") from None
    architectures = list(getattr(config, "architectures", None) or [])
    causal = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in ([v] if isinstance(v, str) else v)}
    remote = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if (
        architectures
        and not remote
        and not any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    ):
        raise ModelLoadError(
            f"policy.model={model!r} is a {', '.join(architectures)} (model_type {config.model_type!r}), not a causal "
            "language model, so it cannot generate completions; use a decoder model (an architecture ending in "
            "ForCausalLM, such as Qwen2ForCausalLM or LlamaForCausalLM)"
        )


def _load_base(path: str, config: PolicyConfig) -> torch.nn.Module:
    """The Hugging Face model at ``path`` on the CPU (in 4-bit on its GPU for QLoRA), ready for adapters."""
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {
        "dtype": DTYPES[config.dtype],
        "trust_remote_code": config.trust_remote_code,
        **load_options(config.use_kernels),
    }
    if config.load_in_4bit:
        options["quantization_config"] = _four_bit(config)
        options["device_map"] = {"": resolve_device(config.device)}
    try:
        net = AutoModelForCausalLM.from_pretrained(path, **options)
    except pickle.UnpicklingError as err:  # a pickled weights file: damaged, or one the safe loader refuses
        raise ModelLoadError(f"{pickled_weights(Path(path))}: {unpickling_reason(err)}") from None
    checkpointing = {"use_reentrant": False}  # works under DDP and FSDP and with inputs that need no gradient
    if config.load_in_4bit:
        # norms and head in float32, inputs that carry gradients to the adapters through the frozen base
        net = _peft().prepare_model_for_kbit_training(
            net,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing,
        )
    elif config.gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    return net


def _four_bit(config: PolicyConfig) -> Any:
    """bitsandbytes' NF4 settings with double quantization and compute in the policy's dtype (QLoRA's)."""
    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes is not installed (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is available")
    elif not config.device.startswith("cuda"):
        missing.append(f"policy.device is {config.device!r}, not cuda")
    if missing:
        raise RuntimeError(
            "policy.load_in_4bit (QLoRA) needs bitsandbytes and a CUDA GPU: "
            + "; ".join(missing)
            + ". Install it with pip install bitsandbytes on a CUDA machine, or set policy.load_in_4bit: false"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES[config.dtype],
    )


def base_weights(
    model: torch.nn.Module, merged: bool, dequantize: bool | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of a peft model's base weights under the base model's names (``...q_proj.weight``, no
    ``base_model.model.`` prefix, no ``base_layer``), whole even when sharded; adapter tensors left out. With
    ``merged`` each adapted weight is ``W + Σ_active (alpha/r)·B·A``, a new tensor; without, the base as it is
    (what the model computes with adapters disabled). ``dequantize`` (default: ``merged``) turns a 4-bit or 8-bit
    base's packed weights into float ones."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    modules = dict(base.named_modules())
    adapted = {name for name, module in modules.items() if isinstance(module, LoraLayer)}
    real = {name for name, _ in base.named_parameters(remove_duplicate=False)}
    real |= {name for name, _ in base.named_buffers(remove_duplicate=False)}
    for key, tensor in base.state_dict().items():
        if key not in real:  # bitsandbytes' quantization state, stored beside its packed weight
            continue
        owner, _, leaf = key.rpartition(".")
        layer = _enclosing(owner, adapted)
        if layer is not None:
            rest = owner[len(layer) + 1 :]
            if not (rest == "base_layer" or rest.startswith("base_layer.")):
                continue  # the adapter's own A, B (and any other adapter state)
            name = ".".join(part for part in (layer, rest.removeprefix("base_layer").lstrip("."), leaf) if part)
        else:
            name = key
        with torch.no_grad():
            if merged if dequantize is None else dequantize:
                tensor = _dequantized(modules[owner], leaf, tensor)
            tensor = _whole(tensor)
            if merged and layer is not None and owner == f"{layer}.base_layer" and leaf == "weight":
                delta = _adapter_delta(modules[layer])
                if delta is not None:
                    tensor = tensor + _whole(delta).to(tensor.dtype)
        yield name, tensor


def _enclosing(name: str, layers: set[str]) -> str | None:
    """The innermost adapted layer that contains the module ``name`` (itself included)."""
    while name:
        if name in layers:
            return name
        name = name.rpartition(".")[0]
    return None


def _dequantized(module: torch.nn.Module, leaf: str, tensor: torch.Tensor) -> torch.Tensor:
    """A 4-bit or 8-bit bitsandbytes weight as a float tensor; any other tensor unchanged."""
    if leaf != "weight" or type(getattr(module, "weight", None)).__name__ not in ("Params4bit", "Int8Params"):
        return tensor
    from peft.utils.integrations import dequantize_module_weight

    return dequantize_module_weight(module)


def _adapter_delta(layer: Any) -> torch.Tensor | None:
    """``Σ (alpha/r)·B·A`` over the layer's active adapters that are not merged already (None: nothing to add)."""
    if layer.disable_adapters:
        return None
    present = set(layer.lora_A.keys()) | set(getattr(layer, "lora_embedding_A", {}).keys())
    delta = None
    for name in layer.active_adapters:
        if name in layer.merged_adapters or name not in present:
            continue
        if name in getattr(layer, "lora_variant", {}):
            raise NotImplementedError(f"merging LoRA variant {type(layer.lora_variant[name]).__name__} (e.g. DoRA)")
        step = layer.get_delta_weight(name)
        delta = step if delta is None else delta + step
    return delta


def _whole(tensor: Any) -> Any:
    """A sharded tensor (FSDP2 DTensor) gathered whole; anything else as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _preallocate(cache: Any, room: int) -> None:
    """Give each layer of a dynamic KV cache ``room`` more positions, written in place as decoding goes (the
    dynamic cache concatenates, copying the whole cache at every token). Other cache kinds are left alone."""
    grown = _growing_layer()
    layers = getattr(cache, "layers", None)
    if grown is None or not layers or any(type(layer) is not grown.__base__ for layer in layers):
        return
    if any(getattr(layer, "keys", None) is None or layer.keys.dim() != 4 for layer in layers):
        return
    for layer in layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name)
            batch, heads, length, dim = tensor.shape
            buffer = tensor.new_empty(batch, heads, length + room, dim)
            buffer[:, :, :length].copy_(tensor)
            setattr(layer, f"_{name}_buffer", buffer)
            setattr(layer, name, buffer[:, :, :length])
        layer.__class__ = grown


@functools.cache
def _growing_layer() -> type | None:
    """``DynamicLayer`` writing into a preallocated buffer (see :func:`_preallocate`); it falls back to the
    dynamic layer's concatenation once the buffer is full or the cache was re-indexed (beam search, selection)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class GrowingLayer(DynamicLayer):
        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            buffer_k, buffer_v = self._keys_buffer, self._values_buffer
            n, q = self.keys.shape[-2], key_states.shape[-2]
            in_place = (
                self.keys.data_ptr() == buffer_k.data_ptr()
                and self.keys.shape[0] == buffer_k.shape[0]
                and n + q <= buffer_k.shape[-2]
            )
            if not in_place:
                return super().update(key_states, value_states, *args, **kwargs)
            buffer_k[:, :, n : n + q].copy_(key_states)
            buffer_v[:, :, n : n + q].copy_(value_states)
            self.keys, self.values = buffer_k[:, :, : n + q], buffer_v[:, :, : n + q]
            return self.keys, self.values

    return GrowingLayer


@functools.cache
def _forward_signature(forward_type: type) -> frozenset[str]:
    return frozenset(inspect.signature(forward_type.forward).parameters)


def _forward_arguments(model: torch.nn.Module) -> frozenset[str]:
    """Keyword arguments the model's forward takes (``logits_to_keep``, ``cache`` or ``past_key_values``, ...);
    for a peft model, its base's (peft passes keyword arguments through)."""
    if is_peft_model(model):
        model = model.get_base_model()
    return _forward_signature(type(model))


def resolve_device(device: str) -> str:
    """``cuda`` means this process's GPU under a launcher (``LOCAL_RANK``), so processes do not share GPU 0."""
    local_rank = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local_rank is not None and torch.cuda.is_available():
        torch.cuda.set_device(int(local_rank))
        return f"cuda:{local_rank}"
    return device


#: Names of the models shipped inside morl: the embedded tasks' warm-started policies.
EMBEDDED_MODELS = ("tinymath", "tinysort")


def resolve_model_path(model: str) -> str:
    """The folder of a shipped model (``tinymath``, ``tinysort``); any other name is returned as given."""
    if model == "tinymath":
        from morl.tinymath import default_model_path

        return str(default_model_path())
    if model == "tinysort":
        from morl.tinysort import default_model_path as tinysort_path

        return str(tinysort_path())
    return model
