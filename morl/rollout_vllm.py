"""vLLM rollouts, colocated with training on the same GPU (the ``morl[vllm]`` extra; recipes say ``rollout: vllm``).

Each training process runs its own vLLM engine on its GPU (``distributed_executor_backend="external_launcher"``,
as TRL's colocate mode) and samples the completions of its share of the prompts. Around every generation:

1. wake the engine (``enable_sleep_mode``: between generations it sleeps, so the trainer gets the memory back;
   ``sleep_level`` 1 keeps its weights in CPU memory, 2 drops them);
2. push the trainer's weights into it if they changed since the last push (after every update; the pipeline calls
   :meth:`VLLMRollout.weights_changed`), and reset its prefix cache, whose entries the old weights computed;
3. sample ``n = K`` completions per prompt with the recipe's temperature, top-p, top-k and ``max_new_tokens``,
   asking for the log-prob of each sampled token (``logprobs=0``) of the *processed* distribution (after
   temperature), which is what the trainer's log-probs measure;
4. put the engine back to sleep.

The engine's log-probs become the batch's ``sampling_logprobs``; ``old_logprobs`` are left to the trainer, which
recomputes them with its own forward pass, and the algorithm corrects the remaining engine/trainer mismatch with a
capped importance ratio (``algo.importance_correction``, :mod:`morl.algos.importance`). With top-p < 1 or top-k the
engine renormalises over the kept tokens and the trainer does not, which biases that ratio: keep top_p 1, top_k 0
(the paper's setting) when the correction matters.

Nothing here imports vLLM until an engine is needed, so the registry lists ``vllm`` without it, and choosing it on
a machine without vLLM fails at the start of training with the ``pip install`` to run. Pure helpers
(:func:`sampling_kwargs`, :func:`assemble_batch`) are tested without vLLM; the engine path needs a GPU
(``scripts/gpu_smoke.sh``).
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from morl import distributed
from morl.batch import Batch
from morl.components import RecipeError
from morl.policy import Policy, resolve_model_path
from morl.rollout import RolloutBackend, SamplingConfig, completion_mask, prompt_texts

INSTALL_HINT = "pip install 'morl[vllm]'"


class VLLMRollout(RolloutBackend):
    """Sampling with a colocated vLLM engine; see the module docstring."""

    name = "vllm"

    class Config(SamplingConfig):
        gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="share of the GPU vLLM may take")
        sleep: bool = Field(True, description="sleep between generations, giving the trainer the memory back")
        sleep_level: Literal[1, 2] = Field(1, description="1: weights kept in CPU memory while asleep; 2: dropped")
        enforce_eager: bool = Field(False, description="no CUDA graphs (slower sampling, faster start, less memory)")
        max_model_len: int | None = Field(None, ge=1, description="default: max_prompt_tokens + max_new_tokens")
        seed: int = Field(0, description="engine seed; process i uses seed + i")
        engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="more keyword arguments of vllm.LLM")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._llm: Any = None  # the engine, created at the first generation (a GPU, minutes, memory)
        self._stale = True  # the engine's weights differ from the policy's
        self._asleep = False

    # ---- the RolloutBackend contract ----------------------------------------------------------------------

    def check_prompts(
        self, policy: Policy, prompts: list[str], split: str = "train", messages: list[Any] | None = None
    ) -> None:
        """vLLM is installed, the policy is on a GPU, and every prompt fits ``max_prompt_tokens``."""
        require_vllm()
        if policy.device.type != "cuda":
            raise RecipeError(
                f"rollout 'vllm' samples on the training GPU, but the policy is on {policy.device}; "
                "set policy.device: cuda, or use rollout: transformers"
            )
        super().check_prompts(policy, prompts, split, messages)

    def weights_changed(self, policy: Policy) -> None:
        self._stale = True

    @torch.no_grad()
    def generate(
        self, policy: Policy, prompts: list[str], columns: dict[str, list[Any]], k: int, *, greedy: bool = False
    ) -> Batch:
        cfg = self.config
        tok = policy.tokenizer
        prompt_ids = self.encode(policy, prompts, columns.get("messages"))
        llm = self._engine(policy)
        self._wake(llm, "weights")
        if self._stale:  # a collective when the trainer's weights are sharded: every process gets here together
            load_weights(llm, policy.named_full_parameters())
            llm.reset_prefix_cache()
            self._stale = False
        self._wake(llm, "kv_cache")
        params = self._sampling_params(sampling_kwargs(cfg, k, greedy, eos_token_ids(tok)))
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        samples = [[(list(c.token_ids), sampled_logprobs(c)) for c in out.outputs] for out in outputs]
        if cfg.sleep:
            llm.sleep(level=cfg.sleep_level)
            self._asleep = True
            self._stale = self._stale or cfg.sleep_level == 2  # level 2 drops the weights
        batch = assemble_batch(prompts, columns, prompt_ids, samples, k, tok)
        return batch.to(policy.device)

    # ---- pieces -----------------------------------------------------------------------------------------

    def encode(self, policy: Policy, prompts: list[str], messages: list[Any] | None) -> list[list[int]]:
        """Prompt token ids (chat template applied as the policy says), cut to ``max_prompt_tokens`` if allowed."""
        cfg = self.config
        ids = policy.tokenizer(prompt_texts(policy, prompts, messages), add_special_tokens=False)["input_ids"]
        limit = cfg.max_prompt_tokens
        if limit is not None:
            for i, row in enumerate(ids):
                if len(row) > limit and not cfg.truncate_prompts:
                    raise ValueError(
                        f"prompt {i} has {len(row)} tokens, over rollout.max_prompt_tokens={limit}: "
                        f"{prompts[i][:200]!r} (set rollout.truncate_prompts: true to cut)"
                    )
            ids = [row[-limit:] for row in ids]
        return ids

    def _sampling_params(self, kwargs: dict[str, Any]) -> Any:
        from vllm import SamplingParams

        return SamplingParams(**kwargs)

    def _engine(self, policy: Policy) -> Any:
        if self._llm is None:
            self._llm = make_engine(self.config, policy)
        return self._llm

    def _wake(self, llm: Any, tag: str) -> None:
        """Wake the weights (before pushing new ones) or the KV cache (before sampling)."""
        if not self._asleep:
            return
        if "tags" in inspect.signature(llm.wake_up).parameters:
            llm.wake_up(tags=[tag])
            self._asleep = tag != "kv_cache"
        else:  # older vLLM wakes everything at once
            llm.wake_up()
            self._asleep = False

    def __getstate__(self) -> dict[str, Any]:  # an engine is not copied, pickled or checkpointed
        state = dict(self.__dict__)
        state.update(_llm=None, _stale=True, _asleep=False)
        return state


def require_vllm() -> None:
    """Raise :class:`RecipeError` with the install command when vLLM is missing."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise RecipeError(
            f"rollout 'vllm' needs the vLLM package, which is not installed: {INSTALL_HINT} "
            "(on a machine with a CUDA GPU), or use rollout: transformers"
        ) from None


def sampling_kwargs(config: VLLMRollout.Config, k: int, greedy: bool, eos_ids: Sequence[int]) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for K completions per prompt, from the rollout config.

    Example:
        >>> cfg = VLLMRollout.Config(max_new_tokens=128, temperature=0.7, top_p=0.9)
        >>> sampling_kwargs(cfg, 16, greedy=False, eos_ids=[2])
        {'n': 16, 'max_tokens': 128, 'logprobs': 0, 'detokenize': False, 'stop_token_ids': [2],
         'temperature': 0.7, 'top_p': 0.9}
        >>> sampling_kwargs(cfg, 1, greedy=True, eos_ids=[])["temperature"]
        0.0
    """
    out: dict[str, Any] = {"n": k, "max_tokens": config.max_new_tokens, "logprobs": 0, "detokenize": False}
    if eos_ids:
        out["stop_token_ids"] = list(eos_ids)
    if greedy:
        out["temperature"] = 0.0
        return out
    out["temperature"] = config.temperature
    out["top_p"] = config.top_p
    if config.top_k > 0:  # vLLM's "no top-k" is 0 in new versions, -1 in old ones: leave it at its default
        out["top_k"] = config.top_k
    return out


def eos_token_ids(tokenizer: Any) -> list[int]:
    eos = tokenizer.eos_token_id
    return [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]


def sampled_logprobs(completion: Any) -> list[float]:
    """The log-prob of each sampled token from a vLLM ``CompletionOutput`` (``logprobs=0``)."""
    if completion.logprobs is None:
        raise RuntimeError("vLLM returned no log-probs; the sampling parameters must ask for logprobs=0")
    out = []
    for token, position in zip(completion.token_ids, completion.logprobs):
        entry = position[token]
        out.append(float(getattr(entry, "logprob", entry)))
    return out


def assemble_batch(
    prompts: list[str],
    columns: dict[str, list[Any]],
    prompt_ids: list[list[int]],
    samples: list[list[tuple[list[int], list[float]]]],
    k: int,
    tokenizer: Any,
) -> Batch:
    """A batch record from token ids: prompts left-padded, completions right-padded and cut after the first EOS,
    the engine's log-probs as ``sampling_logprobs`` (``old_logprobs`` are the trainer's to compute).

    ``samples[i]`` holds prompt i's K ``(completion token ids, log-prob per token)``.
    """
    pad = tokenizer.pad_token_id
    if any(len(group) != k for group in samples):
        raise RuntimeError(f"the engine returned {[len(g) for g in samples]} completions per prompt, expected {k}")
    width = max(len(ids) for ids in prompt_ids)
    length = max(1, max(len(tokens) for group in samples for tokens, _ in group))
    rows = [(ids, tokens, logps) for ids, group in zip(prompt_ids, samples) for tokens, logps in group]
    n = len(rows)
    prompt = torch.full((n, width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.long)
    completion = torch.full((n, length), pad, dtype=torch.long)
    produced = torch.zeros((n, length), dtype=torch.long)
    logprobs = torch.zeros((n, length))
    for i, (ids, tokens, logps) in enumerate(rows):
        if len(logps) != len(tokens):
            raise RuntimeError(f"completion {i}: {len(tokens)} tokens but {len(logps)} log-probs")
        if ids:
            prompt[i, width - len(ids) :] = torch.tensor(ids)
            prompt_mask[i, width - len(ids) :] = 1
        if tokens:
            completion[i, : len(tokens)] = torch.tensor(tokens)
            produced[i, : len(tokens)] = 1
            logprobs[i, : len(tokens)] = torch.tensor(logps)
    mask = completion_mask(completion, tokenizer.eos_token_id) * produced
    completion = completion.masked_fill(~mask.bool(), pad)
    return Batch(
        prompts=[p for p in prompts for _ in range(k)],
        completions=tokenizer.batch_decode(completion, skip_special_tokens=True),
        columns={key: [v for v in values for _ in range(k)] for key, values in columns.items()},
        group_size=k,
        input_ids=torch.cat([prompt, completion], dim=1),
        attention_mask=torch.cat([prompt_mask, mask], dim=1),
        completion_mask=mask,
        prompt_width=width,
        sampling_logprobs=logprobs * mask,
    )


def make_engine(config: VLLMRollout.Config, policy: Policy) -> Any:
    """A vLLM engine in this process on this process's GPU, sharing ``torch.distributed`` with the trainer."""
    require_vllm()
    from vllm import LLM

    # the engine must live in this process, so that the trainer can hand it weights directly
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not distributed.is_distributed():  # external_launcher reads torchrun's variables: a world of one
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    max_len = config.max_model_len
    if max_len is None and config.max_prompt_tokens is not None:
        max_len = config.max_prompt_tokens + config.max_new_tokens
    kwargs: dict[str, Any] = {
        "model": resolve_model_path(policy.config.model),
        "dtype": policy.config.dtype,
        "trust_remote_code": policy.config.trust_remote_code,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "enable_sleep_mode": config.sleep,
        "enforce_eager": config.enforce_eager,
        "seed": config.seed + distributed.rank(),
        "tensor_parallel_size": 1,
        "distributed_executor_backend": "external_launcher",
        "logprobs_mode": "processed_logprobs",  # after temperature, as the trainer's log-probs
        "enable_prefix_caching": True,  # the K completions of a prompt share its prefix
    }
    if max_len is not None:
        kwargs["max_model_len"] = max_len
    kwargs.update(config.engine_kwargs)
    llm = LLM(**kwargs)
    distributed.barrier()  # engines start at different speeds; the trainer's collectives must not time out
    return llm


def engine_model(llm: Any) -> Any | None:
    """The engine's ``nn.Module`` in this process (in-process executor), or None where vLLM hides it."""
    engine = llm.llm_engine
    for path in ("model_executor", "engine_core.engine_core.model_executor"):
        executor = engine
        for attr in path.split("."):
            executor = getattr(executor, attr, None)
        worker = getattr(executor, "driver_worker", None)
        if worker is None:
            continue
        worker = getattr(worker, "worker", worker)  # WorkerWrapperBase in vLLM V1
        model = getattr(getattr(worker, "model_runner", None), "model", None)
        if model is not None:
            return model
    return None


def load_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy Hugging Face-named weights into the engine's model (it converts names, fuses and casts them)."""
    model = engine_model(llm)
    if model is not None:
        model.load_weights(weights)
        return
    named = list(weights)
    llm.apply_model(lambda module: module.load_weights(named))  # newer vLLM: run on the (in-process) worker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
