"""vLLM rollouts, colocated with training on the same GPU (the ``morl[vllm]`` extra; recipes say ``rollout: vllm``).

Each training process runs its own vLLM engine on its GPU (``distributed_executor_backend="external_launcher"``,
as TRL's colocate mode) and samples the completions of its share of the prompts. Around every generation:

1. wake the engine (``enable_sleep_mode``: between generations it sleeps, so the trainer gets the memory back;
   ``sleep_level`` 1 keeps its weights in CPU memory, 2 drops them), after handing the trainer's cached free CUDA
   blocks back to the driver, without which the wake-up can run out of memory (TRL does the same);
2. push the trainer's weights into it if they changed since the last push (after every update; the pipeline calls
   :meth:`VLLMRollout.weights_changed`) through vLLM's own reload path where this vLLM has one (it re-runs the
   quantization and kernel repacking a quantized engine needs; :func:`sync_weights`), reset its prefix cache,
   whose entries the old weights computed, and free the CUDA cache again (the gathered weights are garbage now,
   as verl does after each sync);
3. sample ``n = K`` completions per prompt with the recipe's temperature, top-p, top-k and ``max_new_tokens``,
   asking for the log-prob of each sampled token (``logprobs=0``) of the *processed* distribution (after
   temperature), which is what the trainer's log-probs measure; every prompt gets its own sampling seed
   (:func:`request_seeds`);
4. put the engine back to sleep.

The engine's log-probs become the batch's ``sampling_logprobs``; ``old_logprobs`` are left to the trainer, which
recomputes them with its own forward pass, and the algorithm corrects the remaining engine/trainer mismatch with a
capped importance ratio (``algo.importance_correction``, :mod:`morl.algos.importance`). The engine samples in
``rollout.dtype`` (bfloat16 by default, whatever the trainer's dtype: FlashAttention and half the memory of float32),
one source of that mismatch. With top-p < 1 or top-k the engine renormalises over the kept tokens and the trainer
does not, which biases that ratio: keep top_p 1, top_k 0 (the paper's setting) when the correction matters.

Seeds. The engine's seed is ``rollout.seed`` or, by default, the run's ``train.seed`` (the trainer hands it over
with :meth:`~morl.rollout.RolloutBackend.set_training_seed`), plus the process rank; so ``morl compare --seeds``
runs sample differently. vLLM seeds Python's, NumPy's and torch's global generators when its in-process worker
starts; the backend puts them back as they were, so starting the engine (lazily, at the first generation: at step
0 of a fresh run but at the resumed step of a resumed one) changes nothing the trainer draws. Sampling itself is
seeded per request from (engine seed, number of sampled generations so far), and that count is checkpointed state,
so a resumed run asks the engine for what the uninterrupted run asked for.

:meth:`VLLMRollout.close` shuts the engine down and frees its memory (the trainer calls it when fit ends), so a
second engine can start in the same process (``morl compare``, a notebook re-run); a later generation starts a
fresh engine.

Nothing here imports vLLM until an engine is needed, so the registry lists ``vllm`` without it, and choosing it on
a machine without vLLM fails at the start of training with the ``pip install`` to run. Pure helpers
(:func:`sampling_kwargs`, :func:`engine_kwargs`, :func:`request_seeds`, :func:`assemble_batch`) are tested without
vLLM, the engine protocol against a fake engine; the real engine needs a GPU (``scripts/gpu_smoke.sh``).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import random
import socket
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from morl import distributed
from morl.batch import Batch
from morl.components import RecipeError
from morl.logging import console
from morl.policy import Policy
from morl.rollout import RolloutBackend, SamplingConfig, completion_mask, prompt_texts

INSTALL_HINT = "pip install 'morl[vllm]'"
# TRL's colocate mode caps the tokens vLLM schedules per step at 4096: the engine's start-up profiling reserves
# activation memory for that many tokens, next to the trainer's
BATCHED_TOKENS_FLOOR = 4096
# vllm.LLM arguments that have a rollout field of their own (or come from the policy): not in engine_kwargs
MANAGED_ENGINE_KWARGS = {
    "model": "policy.model",
    "dtype": "rollout.dtype",
    "seed": "rollout.seed",
    "max_model_len": "rollout.max_model_len",
    "max_num_batched_tokens": "rollout.max_num_batched_tokens",
    "gpu_memory_utilization": "rollout.gpu_memory_utilization",
    "enable_sleep_mode": "rollout.sleep",
    "enforce_eager": "rollout.enforce_eager",
}


class VLLMRollout(RolloutBackend):
    """Sampling with a colocated vLLM engine; see the module docstring."""

    name = "vllm"

    class Config(SamplingConfig):
        gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="share of the GPU vLLM may take")
        sleep: bool = Field(True, description="sleep between generations, giving the trainer the memory back")
        sleep_level: Literal[1, 2] = Field(1, description="1: weights kept in CPU memory while asleep; 2: dropped")
        enforce_eager: bool = Field(False, description="no CUDA graphs (slower sampling, faster start, less memory)")
        max_model_len: int | None = Field(None, ge=1, description="default: max_prompt_tokens + max_new_tokens")
        max_num_batched_tokens: int | None = Field(
            None,
            ge=1,
            description="tokens the engine schedules per step, which sizes the activation memory it reserves next "
            "to the trainer (TRL caps it at 4096); default: the larger of 4096 and max_model_len, so a whole "
            "sequence fits one step even without chunked prefill",
        )
        dtype: Literal["bfloat16", "float16", "float32", "auto"] = Field(
            "bfloat16",
            description="dtype the engine samples in: bfloat16 runs FlashAttention in half the memory of float32, "
            "and algo.importance_correction absorbs the engine/trainer mismatch; 'auto': the trainer's "
            "(policy.dtype); float16 on GPUs without bfloat16",
        )
        seed: int | None = Field(
            None,
            description="engine seed, from which every request's sampling seed derives; process i uses seed + i; "
            "None: the run's train.seed",
        )
        weight_sync: Literal["auto", "reload", "load_weights"] = Field(
            "auto",
            description="how new weights reach the engine: 'reload' through vLLM's reload_weights (re-runs its "
            "weight processing, which quantized engines need; recent vLLM), 'load_weights' into the engine's model "
            "directly (unquantized engines only), 'auto': reload where this vLLM has it",
        )
        engine_kwargs: dict[str, Any] = Field(
            default_factory=dict, description="more keyword arguments of vllm.LLM (not those with a field here)"
        )

        @field_validator("engine_kwargs")
        @classmethod
        def _no_managed_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
            clashes = [f"{key} (set {MANAGED_ENGINE_KWARGS[key]})" for key in value if key in MANAGED_ENGINE_KWARGS]
            if clashes:
                raise ValueError(f"these have their own setting: {', '.join(clashes)}")
            return value

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._llm: Any = None  # the engine, created at the first generation (a GPU, minutes, memory)
        self._stale = True  # the engine's weights differ from the policy's
        self._asleep: set[str] = set()  # what of the engine sleeps: "weights", "kv_cache"
        self._owns_world = False  # the engine created torch.distributed's world (a run without a launcher)
        self._training_seed: int | None = None  # train.seed, handed over by the trainer

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

    def set_training_seed(self, seed: int) -> None:
        """The engine's seed follows ``train.seed`` unless ``rollout.seed`` is set."""
        self._training_seed = seed

    @property
    def engine_seed(self) -> int:
        """This process's engine seed: ``rollout.seed`` (else ``train.seed``, else 0) plus the process rank."""
        base = self.config.seed if self.config.seed is not None else self._training_seed
        return (base or 0) + distributed.rank()

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
            sync_weights(llm, policy.named_full_parameters(), cfg.weight_sync)
            llm.reset_prefix_cache()
            empty_cuda_cache()  # the whole weights gathered for the push are garbage now
            self._stale = False
        self._wake(llm, "kv_cache")
        params = self._request_params(sampling_kwargs(cfg, k, greedy, eos_token_ids(tok)), len(prompt_ids), greedy)
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        samples = [[(list(c.token_ids), sampled_logprobs(c)) for c in out.outputs] for out in outputs]
        if cfg.sleep:
            llm.sleep(level=cfg.sleep_level)
            self._asleep = {"weights", "kv_cache"}
            self._stale = self._stale or cfg.sleep_level == 2  # level 2 drops the weights
        batch = assemble_batch(prompts, columns, prompt_ids, samples, k, tok)
        return batch.to(policy.device)

    def close(self) -> None:
        """Shut the engine down and free its GPU memory; the next generation starts a fresh engine.

        What of the engine sleeps is woken first: vLLM releases the memory of its weights and KV cache when their
        tensors die, which only works for memory that is mapped. Teardown errors are reported, not raised: this runs
        while fit ends, possibly on the way out of another error."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        try:
            for tag in ("weights", "kv_cache"):
                self._wake(llm, tag)
            shutdown_engine(llm, destroy_world=self._owns_world)
        except Exception as err:  # cleanup: never mask the error fit may be propagating
            console.print(
                f"[yellow]vLLM engine shutdown failed ({type(err).__name__}: {err}); "
                "a second engine in this process may not start[/]"
            )
        finally:
            self._stale, self._asleep, self._owns_world = True, set(), False
            del llm
            release_memory()

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

    def _request_params(self, kwargs: dict[str, Any], n: int, greedy: bool) -> Any:
        """One ``SamplingParams`` for greedy decoding; else one per prompt, each with its own seed."""
        if greedy:
            return self._sampling_params(kwargs)
        calls = getattr(self, "generations_", 0)  # learned state: appears at the first sampled generation
        self.generations_ = calls + 1
        return [self._sampling_params({**kwargs, "seed": seed}) for seed in request_seeds(self.engine_seed, calls, n)]

    def _sampling_params(self, kwargs: dict[str, Any]) -> Any:
        from vllm import SamplingParams

        return SamplingParams(**kwargs)

    def _engine(self, policy: Policy) -> Any:
        if self._llm is None:
            self._owns_world = not (torch.distributed.is_available() and torch.distributed.is_initialized())
            self._llm = make_engine(self.config, policy, self.engine_seed)
            self._stale, self._asleep = True, set()
        return self._llm

    def _wake(self, llm: Any, tag: str) -> None:
        """Wake the weights (before pushing new ones) or the KV cache (before sampling), if asleep."""
        if tag not in self._asleep:
            return
        empty_cuda_cache()  # the trainer's cached free blocks back to the driver, where vLLM maps its memory from
        if "tags" in inspect.signature(llm.wake_up).parameters:
            llm.wake_up(tags=[tag])
            self._asleep.discard(tag)
        else:  # everything at once (older vLLM has no tags)
            llm.wake_up()
            self._asleep = set()

    def __getstate__(self) -> dict[str, Any]:  # an engine is not copied, pickled or checkpointed
        state = dict(self.__dict__)
        state.update(_llm=None, _stale=True, _asleep=set(), _owns_world=False)
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


def request_seeds(seed: int, call: int, n: int) -> list[int]:
    """Sampling seeds of the ``n`` prompts of the engine's ``call``-th sampled generation (vLLM gives completion j
    of a prompt ``seed + j``).

    A function of ``(seed, call)`` alone: nothing depends on the global random streams or on how the engine
    batches requests, and a resumed run, which restores ``call``, asks for what the uninterrupted run asked for.
    Seeds stay below 2**31 so that every vLLM version takes them.

    Example:
        >>> request_seeds(0, 0, 3) == request_seeds(0, 0, 3) != request_seeds(1, 0, 3) != request_seeds(0, 1, 3)
        True
    """
    state = np.random.SeedSequence([seed & 0xFFFF_FFFF_FFFF_FFFF, call]).generate_state(n)  # uint32 words
    return [int(word) >> 1 for word in state]


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


def engine_kwargs(config: VLLMRollout.Config, policy: Policy, seed: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for an engine in this process, sharing the trainer's GPU."""
    max_len = config.max_model_len
    if max_len is None and config.max_prompt_tokens is not None:
        max_len = config.max_prompt_tokens + config.max_new_tokens
    batched = config.max_num_batched_tokens
    if batched is None:
        batched = max(BATCHED_TOKENS_FLOOR, max_len or 0)
    kwargs: dict[str, Any] = {
        "model": policy.base_model_path(),
        "dtype": policy.config.dtype if config.dtype == "auto" else config.dtype,
        "trust_remote_code": policy.config.trust_remote_code,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "enable_sleep_mode": config.sleep,
        "enforce_eager": config.enforce_eager,
        "seed": seed,
        "max_num_batched_tokens": batched,
        "tensor_parallel_size": 1,
        "distributed_executor_backend": "external_launcher",
        "logprobs_mode": "processed_logprobs",  # after temperature, as the trainer's log-probs
        "enable_prefix_caching": True,  # the K completions of a prompt share its prefix
    }
    if max_len is not None:
        kwargs["max_model_len"] = max_len
    kwargs.update(config.engine_kwargs)
    return kwargs


def make_engine(config: VLLMRollout.Config, policy: Policy, seed: int) -> Any:
    """A vLLM engine in this process on this process's GPU, sharing ``torch.distributed`` with the trainer."""
    require_vllm()
    from vllm import LLM

    # the engine must live in this process, so that the trainer can hand it weights directly
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not distributed.is_distributed():  # external_launcher reads torchrun's variables: a world of one
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            os.environ["MASTER_PORT"] = str(_free_port())  # a fresh one: an earlier engine's may still be held
    with global_rng_kept():  # vLLM's worker seeds Python's, NumPy's and torch's generators as it starts
        llm = LLM(**engine_kwargs(config, policy, seed))
    distributed.barrier()  # engines start at different speeds; the trainer's collectives must not time out
    return llm


@contextlib.contextmanager
def global_rng_kept() -> Iterator[None]:
    """Put Python's, NumPy's and torch's (CPU and CUDA) global generators back as they were on the way out."""
    python, numpy_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def empty_cuda_cache() -> None:
    """Hand the CUDA caching allocator's free blocks back to the driver (nothing without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def release_memory() -> None:
    """Collect a closed engine's objects and hand their GPU memory back.

    vLLM freezes the heap after its in-process engine starts (``gc.freeze``), which hides the engine's reference
    cycles from the collector: unfreeze first, or its tensors survive ``gc.collect``."""
    if gc.get_freeze_count():
        gc.unfreeze()
    gc.collect()
    empty_cuda_cache()


def shutdown_engine(llm: Any, destroy_world: bool) -> None:
    """Stop the engine's core and tear down vLLM's process groups (torch.distributed's world too when the engine
    created it, in a run without a launcher), so that another engine can start in this process."""
    shutdown = getattr(llm, "shutdown", None)  # LLM.shutdown where this vLLM has it, else its engine core's
    if shutdown is None:
        shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
    if shutdown is not None:
        shutdown()
    from vllm.distributed import destroy_distributed_environment, destroy_model_parallel

    destroy_model_parallel()
    if destroy_world:
        destroy_distributed_environment()


def engine_worker(llm: Any) -> Any | None:
    """The engine's worker in this process (in-process executor), or None where vLLM hides it."""
    engine = llm.llm_engine
    for path in ("model_executor", "engine_core.engine_core.model_executor"):
        executor = engine
        for attr in path.split("."):
            executor = getattr(executor, attr, None)
        worker = getattr(executor, "driver_worker", None)
        if worker is not None:
            return getattr(worker, "worker", worker)  # WorkerWrapperBase in vLLM V1
    return None


def engine_model(llm: Any) -> Any | None:
    """The engine's ``nn.Module`` in this process (in-process executor), or None where vLLM hides it."""
    return getattr(getattr(engine_worker(llm), "model_runner", None), "model", None)


def can_reload(llm: Any) -> bool:
    """Whether this vLLM's model runner reloads weights handed to it (``reload_weights(weights_iterator=...)``,
    which re-runs its weight processing: quantization, repacking), rather than only from disk."""
    reload = getattr(getattr(engine_worker(llm), "model_runner", None), "reload_weights", None)
    return reload is not None and "weights_iterator" in inspect.signature(reload).parameters


def is_quantized(llm: Any) -> bool:
    return getattr(getattr(llm.llm_engine, "model_config", None), "quantization", None) is not None


_told: set[str] = set()  # messages already printed once


def sync_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]], how: str = "auto") -> str:
    """Copy Hugging Face-named weights into the engine (it converts names, fuses, casts and, on the reload path,
    quantizes them); returns the path taken: ``"reload_weights"`` or ``"load_weights"``.

    The reload path is vLLM's supported weight update (``collective_rpc("reload_weights", weights_iterator=...)``,
    layer-wise processing after loading). Without it, the weights go into the model's ``load_weights``, which
    skips that processing: right for an unquantized engine, wrong for a quantized one, which is refused."""
    reload = can_reload(llm)
    if how == "reload" and not reload:
        raise RecipeError(
            "rollout.weight_sync: reload needs a vLLM whose model runner's reload_weights takes the weights "
            "(weights_iterator); this one does not: upgrade vLLM or set rollout.weight_sync: load_weights"
        )
    if reload and how != "load_weights":
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        return "reload_weights"
    if is_quantized(llm):
        raise RecipeError(
            "the vLLM engine is quantized, and new weights need its reload path (re-quantization after loading), "
            "which this vLLM lacks or rollout.weight_sync turned off: upgrade vLLM (reload_weights with "
            "weights_iterator), set rollout.weight_sync: auto, or drop the quantization from rollout.engine_kwargs"
        )
    if how == "auto" and "load_weights" not in _told:
        _told.add("load_weights")
        console.print(
            "[yellow]this vLLM cannot reload weights handed to it (no reload_weights(weights_iterator=...)): "
            "morl loads them into the engine's model directly, which is right for an unquantized engine only[/]"
        )
    model = engine_model(llm)
    if model is not None:
        model.load_weights(weights)
        return "load_weights"
    named = list(weights)
    llm.apply_model(lambda module: module.load_weights(named))  # newer vLLM: run on the (in-process) worker
    return "load_weights"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
