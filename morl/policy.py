"""The policy: a causal LM and its tokenizer, loaded from any Hugging Face directory or hub name."""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PolicyConfig(BaseModel):
    """``model`` is ``tinymath`` (the shipped model), a local directory or a hub name."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("tinymath", description="tinymath (shipped), a local model directory or a hub model name")
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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = PolicyConfig(model=model, **options)
        path = resolve_model_path(config.model)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
        net = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[config.dtype], trust_remote_code=config.trust_remote_code
        ).to(resolve_device(config.device))
        if config.gradient_checkpointing:
            # non-reentrant checkpointing works under DDP and FSDP and with inputs that need no gradient
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return cls(net, tokenizer, config)

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return f"Policy(model={self.config.model!r}, parameters={params:,})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

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
        process), with the Hugging Face names; for pushing weights to a rollout engine."""
        for name, tensor in self.model.state_dict().items():
            if hasattr(tensor, "full_tensor"):  # FSDP2 DTensor shard
                tensor = tensor.full_tensor()
            yield name, tensor

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
        prompt then goes through the model once and its KV cache serves its K completions (see
        :meth:`_shared_prompt_logits`); the same log-probs, with the prompt's share of the compute divided by K.
        """
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp_min(0)
        completion = input_ids.shape[1] - prompt_width
        if self._can_share_prompts(input_ids, attention_mask, prompt_width, group_size):
            logits = self._shared_prompt_logits(input_ids, attention_mask, position_ids, prompt_width, group_size)
        else:
            # logits of the completion's positions only: the LM head over the prompt is wasted work (and memory)
            keep = {"logits_to_keep": completion + 1} if "logits_to_keep" in _forward_arguments(self.model) else {}
            model = self._forward_module()
            logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **keep).logits
            logits = logits[:, logits.shape[1] - completion - 1 : -1]
        logits = logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        targets = input_ids[:, prompt_width:]
        logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
        return logp, entropy

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

    def _shared_prompt_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        prompt_width: int,
        k: int,
    ) -> torch.Tensor:
        """Logits ``[N, L, V]`` of the completion positions: one forward pass over the N/K distinct prompts, whose
        KV cache, repeated K times, is the past of a second pass over the N completions. Exactly the function that
        a pass over the whole rows computes (the same attention over the same keys), to float rounding."""
        cache_name = "cache" if "cache" in _forward_arguments(self.model) else "past_key_values"
        head = slice(None, prompt_width)
        prompt = self.model(
            input_ids=input_ids[::k, head],
            attention_mask=attention_mask[::k, head],
            position_ids=position_ids[::k, head],
            use_cache=True,
            logits_to_keep=1,  # the prompt's last position predicts the first completion token
        )
        cache = getattr(prompt, cache_name)
        cache.batch_repeat_interleave(k)
        tail = slice(prompt_width, -1)  # the last token predicts nothing
        rest = self.model(
            input_ids=input_ids[:, tail],
            attention_mask=attention_mask[:, :-1],
            position_ids=position_ids[:, tail],
            use_cache=True,
            **{cache_name: cache},
        )
        return torch.cat([prompt.logits.repeat_interleave(k, dim=0), rest.logits], dim=1)

    def save(self, path: str | Path) -> Path:
        """Hugging Face format. Sharded (FSDP, ZeRO-3): a collective that every process calls; process 0 writes."""
        path = Path(path)
        if self.sharded:
            state = self.accelerator.get_state_dict(self.wrapped)
            if self.accelerator.is_main_process:
                self.model.save_pretrained(path, state_dict=state)
                self.tokenizer.save_pretrained(path)
            return path
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path


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
    """Keyword arguments the model's forward takes (``logits_to_keep``, ``cache`` or ``past_key_values``, ...)."""
    return _forward_signature(type(model))


def resolve_device(device: str) -> str:
    """``cuda`` means this process's GPU under a launcher (``LOCAL_RANK``), so processes do not share GPU 0."""
    local_rank = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local_rank is not None and torch.cuda.is_available():
        torch.cuda.set_device(int(local_rank))
        return f"cuda:{local_rank}"
    return device


def resolve_model_path(model: str) -> str:
    if model == "tinymath":
        from morl.tinymath import default_model_path

        return str(default_model_path())
    return model
