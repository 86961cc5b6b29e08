"""The vLLM rollout backend without vLLM: registry, install message, sampling parameters, batch assembly, the
sleep/wake/weight-push protocol, seeds, engine arguments and shutdown against a fake engine (and a fake ``vllm``
module where the backend imports it), the package bounds, and the importance-sampling correction it feeds."""

from __future__ import annotations

import importlib
import importlib.util
import math
import random
import re
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from morl.algos.importance import importance_metrics, importance_weights
from morl.batch import Batch
from morl.components import _REGISTRY, RecipeError, build, registered
from morl.rollout_vllm import (
    VLLMRollout,
    assemble_batch,
    engine_kwargs,
    engine_model,
    request_seeds,
    sampling_kwargs,
    sync_weights,
)

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ["accuracy", "conciseness", "clarity"]


@pytest.fixture
def no_vllm(monkeypatch):
    """``import vllm`` fails, as on a machine without it (whether or not this one has it)."""
    monkeypatch.setitem(sys.modules, "vllm", None)


def test_registry_lists_vllm_without_importing_it(no_vllm, monkeypatch):
    import morl.rollout_vllm

    assert registered("rollout")["vllm"] is VLLMRollout
    # run the module's code afresh with ``import vllm`` failing: it must not import it (its class registers again,
    # so the registry's entry is put back afterwards)
    monkeypatch.setitem(_REGISTRY["rollout"], "vllm", VLLMRollout)
    spec = importlib.util.spec_from_file_location("rollout_vllm_probe", morl.rollout_vllm.__file__)
    probe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "rollout_vllm_probe", probe)
    spec.loader.exec_module(probe)
    assert probe.VLLMRollout.name == "vllm"
    rollout = build("rollout", {"name": "vllm", "max_new_tokens": 16, "gpu_memory_utilization": 0.5})
    assert rollout.config.max_new_tokens == 16 and "vllm" not in [m for m in sys.modules if sys.modules[m]]


def test_choosing_vllm_without_it_says_what_to_install(no_vllm, tiny_policy):
    rollout = build("rollout", "vllm")
    with pytest.raises(RecipeError, match=r"pip install 'morl\[vllm\]'"):
        rollout.check_prompts(tiny_policy, ["1 + 1 = ?"])
    with pytest.raises(RecipeError, match=r"pip install 'morl\[vllm\]'"):
        rollout.generate(tiny_policy, ["1 + 1 = ?"], {}, 2)


def test_fit_with_vllm_fails_before_training_with_the_install_command(no_vllm, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from morl.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"policy: {{model: {tiny_model_dir}}}\nrollout: {{name: vllm}}\ndata: {{train_size: 8}}\n")
    result = CliRunner().invoke(app, ["fit", str(recipe), "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "pip install 'morl[vllm]'" in " ".join(result.output.split())
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_sampling_parameters_follow_the_rollout_config():
    cfg = VLLMRollout.Config(max_new_tokens=1024, temperature=0.8, top_p=0.95, top_k=20)
    sampled = sampling_kwargs(cfg, 16, greedy=False, eos_ids=[151643, 151645])
    assert sampled == {
        "n": 16,
        "max_tokens": 1024,
        "logprobs": 0,  # the sampled token's log-prob only
        "detokenize": False,  # morl decodes the token ids itself
        "stop_token_ids": [151643, 151645],
        "temperature": 0.8,
        "top_p": 0.95,
        "top_k": 20,
    }
    assert "top_k" not in sampling_kwargs(VLLMRollout.Config(), 4, greedy=False, eos_ids=[1])  # 0: vLLM's default
    greedy = sampling_kwargs(cfg, 1, greedy=True, eos_ids=[])
    assert greedy == {"n": 1, "max_tokens": 1024, "logprobs": 0, "detokenize": False, "temperature": 0.0}


def test_assemble_batch_pads_cuts_after_eos_and_keeps_engine_logprobs(tiny_policy):
    tok = tiny_policy.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    a, b = tok("ab", add_special_tokens=False)["input_ids"], tok("cde", add_special_tokens=False)["input_ids"]
    x, y = tok.convert_tokens_to_ids("x"), tok.convert_tokens_to_ids("y")
    samples = [
        [([x, eos], [-0.5, -0.1]), ([y, y, x], [-1.0, -2.0, -3.0])],
        [([eos], [-0.2]), ([x, eos, y], [-0.3, -0.4, -9.0])],  # a token after EOS is not part of the completion
    ]
    batch = assemble_batch(["p", "q"], {"answer": ["1", "2"]}, [a, b], samples, 2, tok)
    assert batch.size == 4 and batch.group_size == 2 and batch.prompt_width == 3
    assert batch.input_ids[0, :3].tolist() == [pad, *a] and batch.attention_mask[0, :3].tolist() == [0, 1, 1]
    assert batch.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch.completion_ids[3].tolist() == [x, eos, pad]
    assert batch.sampling_logprobs[1].tolist() == [-1.0, -2.0, -3.0] and batch.sampling_logprobs[3, 2] == 0
    assert batch.old_logprobs is None  # the trainer recomputes them
    assert batch.completions == ["x", "yyx", "", "x"] and batch.columns["answer"] == ["1", "1", "2", "2"]


class FakeLLM:
    """What the backend uses of ``vllm.LLM``: generate, sleep, wake_up(tags), reset_prefix_cache, the in-process
    worker and model runner (``reload_weights(weights_iterator=...)`` where ``reload``, as recent vLLM), collective_rpc
    and shutdown. Like vLLM, it seeds the global generators as it starts when given a seed."""

    def __init__(self, tokens: list[int], eos: int, *, reload: bool = False, quantization=None, **kwargs) -> None:
        self.kwargs = kwargs
        if kwargs.get("seed") is not None:  # vLLM's worker calls set_random_seed(seed) as it starts
            random.seed(kwargs["seed"])
            np.random.seed(kwargs["seed"])
            torch.manual_seed(kwargs["seed"])
        self.calls: list[str] = []
        self.loaded: list[str] = []
        self.reloaded: list[str] = []
        self.seeds: list[list[int | None]] = []
        self.closed = False
        model = SimpleNamespace(load_weights=lambda weights: self.loaded.extend(name for name, _ in weights))
        runner = SimpleNamespace(model=model)
        if reload:

            def reload_weights(weights_iterator=None, weights_path=None, is_checkpoint_format=True):
                assert is_checkpoint_format  # HF-named, unprocessed weights: vLLM processes them after loading
                self.reloaded.extend(name for name, _ in weights_iterator)

            runner.reload_weights = reload_weights
        self.worker = SimpleNamespace(
            model_runner=runner, reload_weights=lambda *a, **kw: runner.reload_weights(*a, **kw)
        )
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(worker=self.worker)),
            model_config=SimpleNamespace(quantization=quantization),
        )
        self.tokens, self.eos = tokens, eos

    def generate(self, prompts, params, use_tqdm=False):
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        assert len(per_prompt) == len(prompts)
        n = per_prompt[0]["n"]
        self.calls.append(f"generate n={n}")
        self.seeds.append([p.get("seed") for p in per_prompt])
        completion = [*self.tokens, self.eos]
        logprobs = [{t: SimpleNamespace(logprob=-0.5)} for t in completion]
        out = SimpleNamespace(token_ids=completion, logprobs=logprobs)
        return [SimpleNamespace(outputs=[out] * n) for _ in prompts]

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append(f"rpc {method}")
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    def sleep(self, level):
        self.calls.append(f"sleep {level}")

    def wake_up(self, tags=None):
        self.calls.append(f"wake {','.join(tags) if tags else 'all'}")

    def reset_prefix_cache(self):
        self.calls.append("reset")

    def shutdown(self):
        self.calls.append("shutdown")
        self.closed = True


def _fake_engine(policy, **options) -> FakeLLM:
    tok = policy.tokenizer
    return FakeLLM(tok("12", add_special_tokens=False)["input_ids"], tok.eos_token_id, **options)


def _with_engine(rollout: VLLMRollout, llm: FakeLLM) -> VLLMRollout:
    rollout._llm = llm
    rollout._sampling_params = lambda kwargs: kwargs  # no vllm.SamplingParams here
    return rollout


@pytest.fixture
def fake_vllm(monkeypatch, tiny_policy):
    """An importable ``vllm`` whose ``LLM`` is a :class:`FakeLLM` that, as vLLM, refuses a second live sleep-mode
    engine in one process; torchrun's variables that the backend sets are put back afterwards."""
    engines: list[FakeLLM] = []
    torn_down: list[str] = []

    def make_llm(**kwargs):
        if kwargs.get("enable_sleep_mode") and any(e.kwargs.get("enable_sleep_mode") and not e.closed for e in engines):
            raise AssertionError("Sleep mode can only be used for one instance per process.")
        engines.append(_fake_engine(tiny_policy, **kwargs))
        return engines[-1]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.__version__ = make_llm, dict, "0.33.0"
    vllm.distributed = types.ModuleType("vllm.distributed")
    vllm.distributed.destroy_model_parallel = lambda: torn_down.append("model_parallel")
    vllm.distributed.destroy_distributed_environment = lambda: torn_down.append("world")
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.distributed", vllm.distributed)
    for key in ("VLLM_ENABLE_V1_MULTIPROCESSING", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "set")  # recorded, so that the teardown restores the variable's absence
        monkeypatch.delenv(key)
    return SimpleNamespace(engines=engines, torn_down=torn_down)


def test_engine_protocol_pushes_weights_only_after_updates(tiny_policy):
    rollout = _with_engine(VLLMRollout(max_new_tokens=8), llm := _fake_engine(tiny_policy))
    batch = rollout.generate(tiny_policy, ["1 + 1 = ?"], {"answer": ["2"]}, 3)
    assert batch.completions == ["12"] * 3 and batch.sampling_logprobs.tolist() == [[-0.5] * 3] * 3
    names = [name for name, _ in tiny_policy.model.state_dict().items()]
    assert llm.loaded == names  # the first generation pushes the trainer's weights
    assert llm.calls == ["reset", "generate n=3", "sleep 1"]  # no CUDA here: no cache to empty
    rollout.generate(tiny_policy, ["2 + 2 = ?"], {"answer": ["4"]}, 1, greedy=True)  # no update: no push
    assert llm.loaded == names and llm.calls[3:] == ["wake weights", "wake kv_cache", "generate n=1", "sleep 1"]
    rollout.weights_changed(tiny_policy)  # the pipeline calls this after every update
    rollout.generate(tiny_policy, ["1 + 1 = ?"], {"answer": ["2"]}, 2)
    assert llm.loaded == names * 2 and llm.calls[7:] == [
        "wake weights",
        "reset",
        "wake kv_cache",
        "generate n=2",
        "sleep 1",
    ]


def test_cuda_cache_is_emptied_before_every_wake_up_and_after_every_weight_sync(tiny_policy, monkeypatch):
    llm = _fake_engine(tiny_policy)
    rollout = _with_engine(VLLMRollout(max_new_tokens=4), llm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: llm.calls.append("empty_cache"))
    rollout.generate(tiny_policy, ["1 + 1 = ?"], {}, 2)  # awake: nothing to wake
    assert llm.calls == ["reset", "empty_cache", "generate n=2", "sleep 1"]
    rollout.weights_changed(tiny_policy)
    rollout.generate(tiny_policy, ["1 + 1 = ?"], {}, 2)
    assert llm.calls[4:] == [
        "empty_cache",  # the trainer's cached free blocks go back to the driver before vLLM maps its memory
        "wake weights",
        "reset",
        "empty_cache",  # the gathered weights of the push are garbage
        "empty_cache",
        "wake kv_cache",
        "generate n=2",
        "sleep 1",
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no CUDA: never touched
    rollout.generate(tiny_policy, ["1 + 1 = ?"], {}, 2)
    assert "empty_cache" not in llm.calls[12:] and llm.calls[12:14] == ["wake weights", "wake kv_cache"]


def test_weights_go_through_vllms_reload_path_where_it_has_one(tiny_policy):
    names = list(tiny_policy.model.state_dict())
    reloading = _fake_engine(tiny_policy, reload=True)
    assert sync_weights(reloading, tiny_policy.named_full_parameters()) == "reload_weights"
    assert reloading.calls == ["rpc reload_weights"] and reloading.reloaded == names and reloading.loaded == []
    # through the backend too, and on request into the model directly
    rollout = _with_engine(VLLMRollout(max_new_tokens=4), llm := _fake_engine(tiny_policy, reload=True))
    rollout.generate(tiny_policy, ["1 + 1 = ?"], {}, 2)
    assert llm.calls[:2] == ["rpc reload_weights", "reset"] and llm.reloaded == names
    direct = _fake_engine(tiny_policy, reload=True)
    assert sync_weights(direct, tiny_policy.named_full_parameters(), "load_weights") == "load_weights"
    assert direct.loaded == names and direct.reloaded == []
    # an older vLLM: the model's load_weights, said once; never for a quantized engine, whose weights need vLLM's
    # processing after loading; and an explicit "reload" it cannot do is an error, not a silent fallback
    old = _fake_engine(tiny_policy)
    assert sync_weights(old, tiny_policy.named_full_parameters()) == "load_weights" and old.loaded == names
    with pytest.raises(RecipeError, match="quantized"):
        sync_weights(_fake_engine(tiny_policy, quantization="fp8"), tiny_policy.named_full_parameters())
    with pytest.raises(RecipeError, match="quantized"):
        quantized = _fake_engine(tiny_policy, reload=True, quantization="fp8")
        sync_weights(quantized, tiny_policy.named_full_parameters(), "load_weights")
    with pytest.raises(RecipeError, match="weights_iterator"):
        sync_weights(_fake_engine(tiny_policy), tiny_policy.named_full_parameters(), "reload")


def test_engine_arguments_cap_batched_tokens_and_sample_in_bfloat16(tiny_policy):
    def kwargs(**config):
        return engine_kwargs(VLLMRollout.Config(**config), tiny_policy, seed=11)

    default = kwargs(max_new_tokens=64)
    assert default["max_num_batched_tokens"] == 4096 and "max_model_len" not in default  # TRL's cap
    assert default["dtype"] == "bfloat16" and tiny_policy.config.dtype == "float32"  # not the trainer's float32
    assert default["seed"] == 11 and default["distributed_executor_backend"] == "external_launcher"
    paper = kwargs(max_prompt_tokens=1024, max_new_tokens=1024)
    assert paper["max_model_len"] == 2048 and paper["max_num_batched_tokens"] == 4096
    long = kwargs(max_prompt_tokens=8192, max_new_tokens=1024)  # a whole sequence fits one step
    assert long["max_model_len"] == long["max_num_batched_tokens"] == 9216
    assert kwargs(max_model_len=256, max_num_batched_tokens=1024)["max_num_batched_tokens"] == 1024
    assert kwargs(dtype="auto")["dtype"] == "float32" and kwargs(dtype="float16")["dtype"] == "float16"
    assert kwargs(engine_kwargs={"kv_cache_dtype": "fp8"})["kv_cache_dtype"] == "fp8"
    with pytest.raises(RecipeError, match=r"rollout\.dtype"):
        build("rollout", {"name": "vllm", "engine_kwargs": {"dtype": "float32"}})


def test_engine_seed_follows_the_training_seed(fake_vllm, tiny_policy):
    from morl.pipeline import Pipeline, TrainConfig

    seeds = []
    for seed in (0, 1):
        config = TrainConfig(seed=seed, progress=False)
        pipe = Pipeline(tiny_policy, OBJECTIVES, rollout="vllm", config=config, diagnostics=False)
        rollout = pipe.validate().parts_.rollout  # built with the pipeline's components
        llm = rollout._engine(pipe.policy)
        seeds.append(llm.kwargs["seed"])
        rollout.close()
    assert seeds == [0, 1]  # morl compare --seeds: each run samples from its own engine seed
    fixed = build("rollout", {"name": "vllm", "seed": 7})
    fixed.set_training_seed(1)
    assert fixed._engine(tiny_policy).kwargs["seed"] == 7  # rollout.seed, when set, wins


def test_starting_an_engine_leaves_the_global_generators_alone(fake_vllm, tiny_policy):
    rollout = VLLMRollout()
    rollout.set_training_seed(123)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    rollout._engine(tiny_policy)
    assert fake_vllm.engines[0].kwargs["seed"] == 123  # the fake engine did reseed them (as vLLM does)
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all()
    assert torch.equal(torch.get_rng_state(), before[2])
    rollout.close()


def test_every_prompt_gets_its_own_seed_and_a_resumed_run_the_same_ones(tiny_policy):
    def backend(seed: int, state: dict | None = None) -> tuple[VLLMRollout, FakeLLM]:
        rollout = _with_engine(VLLMRollout(max_new_tokens=4), llm := _fake_engine(tiny_policy))
        rollout.set_training_seed(seed)
        if state is not None:
            rollout.load_state_dict(state)
        return rollout, llm

    rollout, llm = backend(0)
    prompts = ["1 + 1 = ?", "2 + 2 = ?", "3 + 3 = ?"]
    rollout.generate(tiny_policy, prompts, {}, 2)
    state = rollout.state_dict()  # what a checkpoint after the first step holds
    assert state == {"generations_": 1}
    rollout.generate(tiny_policy, prompts, {}, 2)
    rollout.generate(tiny_policy, prompts, {}, 1, greedy=True)  # greedy: no seed, no draw
    first, second, greedy = llm.seeds
    assert len(set(first)) == 3 and set(first).isdisjoint(second) and greedy == [None] * 3
    assert first == request_seeds(0, 0, 3) and all(0 <= s < 2**31 for s in first + second)
    resumed, resumed_llm = backend(0, state)
    resumed.generate(tiny_policy, prompts, {}, 2)
    assert resumed_llm.seeds == [second]  # the resumed run asks for what the uninterrupted one asked for
    other, other_llm = backend(1)
    other.generate(tiny_policy, prompts, {}, 2)
    assert set(other_llm.seeds[0]).isdisjoint(first)  # another train.seed, other samples


def test_close_frees_the_engine_so_that_another_can_start(fake_vllm, tiny_policy):
    first = VLLMRollout(max_new_tokens=4)
    first.generate(tiny_policy, ["1 + 1 = ?"], {}, 2)  # starts an engine, which then sleeps
    engine = fake_vllm.engines[0]
    second = VLLMRollout(max_new_tokens=4)
    with pytest.raises(AssertionError, match="one instance per process"):
        second._engine(tiny_policy)  # what a second fit (morl compare, a notebook re-run) met
    first.close()
    assert engine.calls[-3:] == ["wake weights", "wake kv_cache", "shutdown"]  # vLLM frees only mapped memory
    assert fake_vllm.torn_down == ["model_parallel", "world"]  # the engine created the world: it goes too
    assert first._llm is None
    first.close()  # idempotent
    second.generate(tiny_policy, ["1 + 1 = ?"], {}, 2)
    second.close()
    first.generate(tiny_policy, ["1 + 1 = ?"], {}, 2)  # a closed backend starts afresh, pushing the weights again
    assert len(fake_vllm.engines) == 3 and fake_vllm.engines[2].loaded == list(tiny_policy.model.state_dict())
    first.close()


def test_fit_hands_the_seed_to_the_rollout_and_closes_it(tiny_policy, tmp_path):
    from morl.pipeline import Pipeline, TrainConfig
    from morl.rollout import TransformersRollout
    from morl.tinymath.task import make_split

    class Recording(TransformersRollout):
        def set_training_seed(self, seed):
            self.seed = seed

        def close(self):
            self.closed = getattr(self, "closed", 0) + 1

    config = TrainConfig(
        steps=1, prompts_per_step=2, group_size=2, seed=5, eval_every=0, progress=False, save_model=False,
        output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    pipe = Pipeline(tiny_policy, OBJECTIVES, rollout=Recording(max_new_tokens=4), config=config, diagnostics=False)
    pipe.validate()  # the components are built (and the rollout told the seed) once, here
    assert pipe.rollout.seed == 5
    pipe.fit(make_split("train", 4, 0))
    assert pipe.rollout.closed == 1


def test_package_bounds_admit_the_versions_checked_against():
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["vllm"]]
    spec = {r.name: r.specifier for r in requirements}
    assert "0.33.0" in spec["vllm"] and "0.10.2" in spec["vllm"]  # processed_logprobs since 0.10.2
    assert "0.10.1" not in spec["vllm"] and "0.34.0" not in spec["vllm"]  # bounded: its APIs move fast
    assert "1.15.0" in spec["accelerate"] and "1.7.0" in spec["accelerate"]
    assert "1.5.2" not in spec["accelerate"] and "1.6.0" not in spec["accelerate"]  # FSDP2 full state dict: 1.7
    assert "2.11.0" in spec["torch"]


def test_gpu_smoke_script_runs_three_methods_and_a_fallback_vllm_reads():
    script = ROOT / "scripts" / "gpu_smoke.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)  # it parses
    text = script.read_text()
    runs = dict(re.findall(r"^run_vllm vllm_(\w+) (\S+\.yaml)", text, flags=re.MULTILINE))
    assert set(runs) == {"fixed", "ctwa", "mgda"}
    for method, recipe in runs.items():  # each run's recipe uses the method the run is named after
        controller = yaml.safe_load((ROOT / "cookbook" / "recipes" / recipe).read_text())["controller"]
        assert (controller if isinstance(controller, str) else controller["name"]) == method
    assert "attention_backend" in text  # current vLLM reads the engine argument, not VLLM_ATTENTION_BACKEND


def test_engine_model_is_found_in_old_and_new_vllm_layouts():
    model = object()
    old = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(
        driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=model)))))  # fmt: skip
    core = SimpleNamespace(engine_core=SimpleNamespace(model_executor=SimpleNamespace(
        driver_worker=SimpleNamespace(worker=SimpleNamespace(model_runner=SimpleNamespace(model=model))))))  # fmt: skip
    new = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=core))
    assert engine_model(old) is model and engine_model(new) is model
    assert engine_model(SimpleNamespace(llm_engine=SimpleNamespace())) is None


# ---- importance-sampling correction -------------------------------------------------------------------------


def test_importance_weights_match_the_formulas():
    old = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.1, -0.1, 0.0, 0.0]])
    engine = torch.tensor([[-2.0, -1.0, -0.5, 0.0], [-1.0, -0.2, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    token = torch.exp(old - engine)
    seq = torch.exp(torch.tensor([0.0, 1.0]))  # sums of log-ratios over each completion: 1 - 1 + 0, 0.9 + 0.1
    pad = ~mask.bool()

    def check(mode: str, expected: torch.Tensor) -> None:
        got = importance_weights(old, engine, mask, mode, cap=2.0)
        torch.testing.assert_close(got, torch.where(pad, torch.ones_like(expected), expected))

    check("none", torch.ones_like(old))
    check("token_truncate", token.clamp(max=2.0))  # e = 2.718 -> 2
    check("token_mask", torch.where(token > 2.0, torch.zeros_like(token), token))
    check("sequence_truncate", seq.clamp(max=2.0).unsqueeze(1).expand_as(old))
    check("sequence_mask", torch.where(seq > 2.0, 0.0, seq).unsqueeze(1).expand_as(old))
    with pytest.raises(ValueError, match="allowed"):
        importance_weights(old, engine, mask, "tokens", cap=2.0)


def test_importance_metrics_report_the_mismatch():
    old, engine = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -1.0]])
    out = importance_metrics(old, engine, torch.ones(1, 2), "token_truncate", cap=2.0)
    assert out["sampling/logp_difference/mean"] == pytest.approx(1.0)
    assert out["sampling/importance_ratio/max"] == pytest.approx(2.0)  # e capped at 2
    assert out["sampling/importance_ratio/min"] == pytest.approx(math.exp(-1))
    assert out["sampling/importance_capped"] == pytest.approx(0.5)


def _mismatched_batch() -> Batch:
    logp = torch.tensor([[-1.0, -1.5], [-0.7, -2.0]])
    return Batch(
        prompts=["p", "p"],
        completions=["a", "b"],
        columns={},
        group_size=2,
        input_ids=torch.zeros(2, 3, dtype=torch.long),
        attention_mask=torch.ones(2, 3, dtype=torch.long),
        completion_mask=torch.ones(2, 2, dtype=torch.long),
        prompt_width=1,
        old_logprobs=logp,
        ref_logprobs=logp - 0.1,
        sampling_logprobs=logp - torch.tensor([[0.5, -2.0], [0.0, 1.0]]),  # engine log-probs
        advantages=torch.tensor([1.0, -1.0]),
    )


@pytest.mark.parametrize("algo_name", ["reinforce", "grpo"])
def test_surrogate_weights_the_policy_term_only(algo_name):
    batch = _mismatched_batch()
    algo = build("algo", {"name": algo_name, "kl_coef": 0.5, "importance_correction": "token_truncate"})
    plain = build("algo", {"name": algo_name, "kl_coef": 0.5, "importance_correction": "none"})
    logp = batch.old_logprobs.clone().requires_grad_()  # on-policy: ratio 1, nothing clipped
    loss, stats = algo.surrogate(logp, batch, batch.advantages)
    weights = importance_weights(
        batch.old_logprobs, batch.sampling_logprobs, batch.completion_mask, "token_truncate", 2.0
    )
    policy_term = -(weights * batch.advantages.unsqueeze(1)).mean()
    kl = stats["kl"] * 0.5
    assert float(loss.detach()) == pytest.approx(float(policy_term + kl), abs=1e-6)
    loss_plain, _ = plain.surrogate(logp.detach(), batch, batch.advantages)
    assert float(loss_plain) == pytest.approx(float(-batch.advantages.unsqueeze(1).expand(2, 2).mean() + kl), abs=1e-6)
    # the covariance law's clipped advantage weight carries the same correction
    w = algo.clipped_advantage_weight(batch.old_logprobs, batch)
    torch.testing.assert_close(w, (weights * batch.advantages.unsqueeze(1)).mean(dim=1))
    no_engine = _mismatched_batch()
    no_engine.sampling_logprobs = None  # the trainer sampled: no correction whatever the setting
    assert float(algo.surrogate(logp, no_engine, batch.advantages)[0].detach()) == pytest.approx(
        float(loss_plain.detach())
    )
