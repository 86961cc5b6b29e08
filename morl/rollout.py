"""Rollout backends: prompts -> K sampled completions per prompt, with token ids, masks and log-probs.

``transformers`` (here) samples with ``model.generate``, on the CPU or one GPU; ``vllm``
(:mod:`morl.rollout_vllm`, the ``morl[vllm]`` extra) samples with a vLLM engine colocated on the training GPU.
When a row has chat ``messages`` (verl parquet) and ``policy.chat_template`` is on, the prompt is the tokenizer's
chat template applied to them.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Literal

import torch
from pydantic import Field
from transformers import GenerationConfig

from morl.batch import Batch
from morl.compact import CompactDecoder, disagreement, unsupported_reason
from morl.components import Component, ComponentConfig
from morl.decoding import sample
from morl.policy import Policy


class SamplingConfig(ComponentConfig):
    """What every rollout backend samples with; backends add their own fields."""

    max_new_tokens: int = Field(64, ge=1, description="completion length cap in tokens; longer completions are cut")
    temperature: float = Field(
        1.0, gt=0, description="sampling temperature T; the algorithm takes its log-probs at it (its one home)"
    )
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus (top-p) probability mass kept when sampling; 1: off")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens; 0: no top-k")
    max_prompt_tokens: int | None = Field(
        None,
        ge=1,
        description="longest prompt in tokens; longer is an error unless truncate_prompts; None: no limit",
    )
    truncate_prompts: bool = Field(False, description="keep the last max_prompt_tokens tokens of a long prompt")


class RolloutBackend(Component):
    family = "rollout"

    def generate(
        self, policy: Policy, prompts: list[str], columns: dict[str, list[Any]], k: int, *, greedy: bool = False
    ) -> Batch:
        """A batch of ``len(prompts) × k`` rows; ``columns`` are per-prompt and get repeated per completion."""
        raise NotImplementedError

    def check_prompts(
        self, policy: Policy, prompts: list[str], split: str = "train", messages: list[Any] | None = None
    ) -> None:
        """Before training: raise :class:`morl.data.DataError` naming the first row this backend cannot take —
        by default, a prompt over ``max_prompt_tokens`` unless ``truncate_prompts`` keeps its last tokens."""
        cfg = self.config
        if isinstance(cfg, SamplingConfig):
            check_prompt_lengths(
                policy, prompts, split, messages, cfg.max_prompt_tokens, cfg.truncate_prompts, cfg.max_new_tokens
            )

    def weights_changed(self, policy: Policy) -> None:
        """The policy's weights changed (a policy update, a resumed checkpoint). Backends that sample from their
        own copy of the weights (vLLM) refresh it before their next generation; the pipeline calls this on every
        process after every update."""

    def set_training_seed(self, seed: int) -> None:
        """The run's seed (``train.seed``), handed over by the trainer before any generation. Backends with random
        streams of their own (vLLM's engine) derive them from it unless their config fixes a seed; by default there
        is nothing to do: ``transformers`` samples from torch's global generator, which the trainer seeds."""

    def close(self) -> None:
        """Release what the backend holds (an inference engine and its GPU memory), so that another one can start
        in this process; the trainer calls it when fit ends. The backend stays usable: its next generation starts
        afresh. Nothing to do by default."""


def prompt_texts(policy: Policy, prompts: list[str], messages: list[Any] | None = None) -> list[str]:
    """What the model continues for each prompt: see :meth:`morl.policy.Policy.format_prompt`."""
    turns = messages if messages is not None else [None] * len(prompts)
    return [policy.format_prompt(p, m) for p, m in zip(prompts, turns)]


def check_prompt_lengths(
    policy: Policy,
    prompts: list[str],
    split: str,
    messages: list[Any] | None,
    limit: int | None,
    truncate: bool,
    max_new_tokens: int = 0,
) -> None:
    """Raise :class:`morl.data.DataError` for the first prompt over ``limit`` tokens (unless ``truncate``), or whose
    tokens plus ``max_new_tokens`` do not fit the model's context (``max_position_embeddings``): such a prompt
    would be trained on cut or garbled, with only a library warning."""
    context = getattr(getattr(policy.model, "config", None), "max_position_embeddings", None)  # configs vary
    if not prompts or (limit is None and not isinstance(context, int)):
        return
    from morl.data import DataError

    kept = limit if truncate and limit is not None else None  # truncated prompts keep their last `limit` tokens
    texts = prompt_texts(policy, prompts, messages)
    for i, ids in enumerate(policy.tokenizer(texts, add_special_tokens=False)["input_ids"]):
        length = min(len(ids), kept) if kept is not None else len(ids)
        if limit is not None and not truncate and length > limit:
            raise DataError(
                f"{split} row {i}: the prompt has {length} tokens, over rollout.max_prompt_tokens={limit}: "
                f"{prompts[i][:200]!r}; set rollout.truncate_prompts: true to keep its last {limit} tokens"
            )
        if isinstance(context, int) and length + max_new_tokens > context:
            raise DataError(
                f"{split} row {i}: the prompt has {length} tokens and rollout.max_new_tokens={max_new_tokens}, over "
                f"the model's context of {context} tokens: {prompts[i][:200]!r}; shorten the prompts, lower "
                "max_new_tokens, or set rollout.max_prompt_tokens with truncate_prompts: true"
            )


# transformers fills every unset generation field from the model's own generation_config: set the ones that
# would reshape the sampling distribution to their neutral values, so the model's defaults cannot
NEUTRAL_PROCESSORS = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_new_tokens": 0,
}


class TransformersRollout(RolloutBackend):
    """Sampling with ``model.generate`` (KV cache, all P×K sequences in one batch, early stop at EOS).

    ``old_logprobs`` are the sampling policy's log-probs ``log softmax(logits / T)``. With ``logprobs: generate``
    they are read from the generation logits, so on-policy training needs no extra forward pass — but every
    step's logits are kept (N × L × vocabulary floats), which is cheap for a small vocabulary and far too much
    for a 150k one: there use ``logprobs: trainer`` and the pipeline recomputes them with one forward pass.

    Sampling uses exactly the configured parameters: the model's own generation defaults (a repetition
    penalty, say) are ignored, since training assumes the sampling distribution is ``softmax(logits / T)``
    truncated only by ``top_k`` / ``top_p``.

    With ``decoder: auto`` (the default), Llama-family models (Llama, Qwen2, Mistral; plain linear layers, with or
    without LoRA adapters) are sampled by morl's own loop over a compact forward pass (:mod:`morl.decoding`), with
    the same random draws as ``generate``: the quickstart's rollouts take 0.57× the time
    (``benchmarks/decoding.py``). Its logits are compared with the model's own forward on first use; a model it
    cannot run, or whose logits differ, is sampled with ``generate`` (``decoder_used`` and ``decoder_reason`` say
    which and why).
    """

    name = "transformers"

    class Config(SamplingConfig):
        logprobs: Literal["generate", "trainer"] = Field(
            "generate", description="old log-probs from generation logits (small vocab) or one trainer forward pass"
        )
        decoder: Literal["auto", "generate"] = Field(
            "auto",
            description="auto: morl's compact decoding loop for Llama-family models (checked against the model's "
            "own forward on first use), transformers' generate for others; generate: always model.generate",
        )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._compact: CompactDecoder | None = None
        self._refused: weakref.WeakSet = weakref.WeakSet()  # models whose compact logits differed from their forward
        self.decoder_used: str | None = None  # "compact" or "generate", for the last batch
        self.decoder_reason: str | None = None  # why the last batch was not sampled by the compact loop

    @torch.no_grad()
    def generate(
        self, policy: Policy, prompts: list[str], columns: dict[str, list[Any]], k: int, *, greedy: bool = False
    ) -> Batch:
        cfg = self.config
        tok = policy.tokenizer
        texts = prompt_texts(policy, prompts, columns.get("messages"))
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, attn = enc["input_ids"], enc["attention_mask"]
        if cfg.max_prompt_tokens is not None and ids.shape[1] > cfg.max_prompt_tokens:
            lengths = attn.sum(1)
            longest = int(lengths.argmax())
            if not cfg.truncate_prompts:
                raise ValueError(
                    f"prompt {longest} has {int(lengths[longest])} tokens, over rollout.max_prompt_tokens="
                    f"{cfg.max_prompt_tokens}: {prompts[longest][:200]!r} (set rollout.truncate_prompts: true to cut)"
                )
            ids, attn = ids[:, -cfg.max_prompt_tokens :], attn[:, -cfg.max_prompt_tokens :]
        input_ids = ids.repeat_interleave(k, dim=0).to(policy.device)
        attention = attn.repeat_interleave(k, dim=0).to(policy.device)
        keep_logprobs = not greedy and cfg.logprobs == "generate"
        prompt_ids, prompt_mask = ids.to(policy.device), attn.to(policy.device)
        compact = self._compact_decoder(policy, prompt_ids, prompt_mask)
        if compact is not None:
            eos = tok.eos_token_id
            completion, old = sample(
                compact,
                prompt_ids,
                prompt_mask,
                k,
                cfg.max_new_tokens,
                eos_token_ids=[] if eos is None else eos if isinstance(eos, list) else [eos],
                pad_token_id=tok.pad_token_id,
                greedy=greedy,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                logprobs=keep_logprobs,
            )
        else:
            completion, old = self._generate(
                policy, prompt_ids, prompt_mask, input_ids, attention, k, greedy, keep_logprobs
            )
        width = input_ids.shape[1]
        mask = completion_mask(completion, tok.eos_token_id)
        completion = completion.masked_fill(~mask.bool(), tok.pad_token_id)
        if old is not None:
            old = old * mask
        texts_out = tok.batch_decode(completion, skip_special_tokens=True)
        full_mask = torch.cat([attention, mask], dim=1)
        return Batch(
            prompts=[p for p in prompts for _ in range(k)],
            completions=texts_out,
            columns={key: [v for v in values for _ in range(k)] for key, values in columns.items()},
            group_size=k,
            input_ids=torch.cat([input_ids, completion], dim=1),
            attention_mask=full_mask,
            completion_mask=mask,
            prompt_width=width,
            old_logprobs=old,
        )

    def _compact_decoder(
        self, policy: Policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
    ) -> CompactDecoder | None:
        """The compact decoder for this policy's model, its weights re-read; None (and why) where it cannot run."""
        model = policy.model
        length = prompt_ids.shape[1] + self.config.max_new_tokens
        reason = None
        if self.config.decoder == "generate":
            reason = "rollout.decoder is 'generate'"
        elif policy.sharded:
            reason = "the weights are sharded across processes"
        elif model in self._refused:
            reason = "its logits differed from the model's own forward on first use"
        else:
            reason = unsupported_reason(model, length)
            if reason is None and (self._compact is None or self._compact.model is not model):
                decoder = CompactDecoder(model)
                reason = disagreement(decoder, model, prompt_ids, prompt_mask)
                if reason:
                    self._refused.add(model)
                    warnings.warn(f"rollout: sampling with generate: the compact decoder's {reason}", stacklevel=3)
                else:
                    self._compact = decoder
            elif reason is None:
                self._compact.refresh()
        self.decoder_used = "generate" if reason else "compact"
        self.decoder_reason = reason
        return None if reason else self._compact

    def _generate(
        self,
        policy: Policy,
        ids: torch.Tensor,
        attn: torch.Tensor,
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        k: int,
        greedy: bool,
        keep_logprobs: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """transformers' ``model.generate`` on the P prompts ``ids`` (on the policy's device) repeated K times
        (``input_ids``): completion ids ``[N, L]`` and, with ``keep_logprobs``, their old log-probs (from the
        generation logits)."""
        cfg = self.config
        tok = policy.tokenizer
        sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k}
        if greedy:  # transformers' own defaults, which it does not warn about when sampling is off
            sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
        generation = GenerationConfig(
            do_sample=not greedy,
            max_new_tokens=cfg.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            output_logits=keep_logprobs,
            return_dict_in_generate=True,
            **sampling,
            **NEUTRAL_PROCESSORS,
        )
        # prefill once per prompt, not per completion, into a cache with room for the completions
        shared = policy.prompt_cache(ids, attn, k, cfg.max_new_tokens)
        out = policy.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            **shared,
            generation_config=generation,
            synced_gpus=policy.sharded,  # sharded weights: every process runs as many forward passes as the longest
        )
        completion = out.sequences[:, input_ids.shape[1] :]
        if not keep_logprobs:
            return completion, None
        logits = torch.stack(out.logits, dim=1).float()
        if cfg.temperature != 1.0:
            logits = logits / cfg.temperature
        return completion, torch.log_softmax(logits, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)


def completion_mask(completion: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """1 for tokens up to and including the first EOS, 0 after it."""
    if eos_token_id is None:
        return torch.ones_like(completion)
    eos_ids = torch.tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id])
    is_eos = torch.isin(completion, eos_ids.to(completion.device))
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).long()
