"""LoRA through peft: only adapters train, the KL reference is the base with adapters disabled (no copy),
checkpoints hold the adapter and resume bit-identically, merged weights for export and for vLLM."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from morl import Pipeline, TrainConfig
from morl.checkpoint import (
    CheckpointError,
    check_reference,
    list_checkpoints,
    load_weights,
    reference_pointer,
    weights_fingerprint,
)
from morl.cli import app
from morl.policy import ADAPTER_CONFIG, AdapterReference, LoraConfig, Policy, PolicyConfig
from morl.recipe import load_data, load_recipe, pipeline_from_recipe
from morl.statistics import select_parameters
from morl.tinymath import default_model_path
from morl.tinymath.task import make_split

RECIPE = Path(__file__).resolve().parents[1] / "cookbook" / "recipes" / "lora.yaml"
LORA = {"r": 4, "alpha": 8}


def _overrides(out: Path) -> list[str]:
    return [
        "train.steps=2",
        "train.prompts_per_step=2",
        "train.group_size=4",
        "rollout.max_new_tokens=24",
        "data.eval_size=4",
        "data.train_size=8",
        "train.progress=false",
        "train.checkpoint_every=1",
        f"train.output_dir={out}",
    ]


@pytest.fixture
def one_thread():
    """Training sets torch's (process-wide) thread count; give the rest of the suite its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """The cookbook's LoRA recipe (CTWA, KL to the adapter-disabled base, merged export), 2 steps on the shipped
    TinyMath model (~7 s): its completions differ in reward, so the adapters move (the 13k-parameter random model's
    all tie, and a zero advantage trains nothing)."""
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("lora") / "run"
    overrides = _overrides(out)
    recipe = load_recipe(RECIPE, overrides)
    pipe = pipeline_from_recipe(recipe)
    initial = {n: p.detach().clone() for n, p in pipe.policy.model.named_parameters()}
    result = pipe.fit(*load_data(recipe))
    torch.set_num_threads(before)
    return pipe, result, initial, overrides


def _base_names(name: str) -> str:
    """A peft parameter name as the plain model names it."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _logprobs(policy: Policy, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Log-probs of random completions after TinyMath prompts, and the tensors they were taken on."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, len(policy.tokenizer), (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    with torch.no_grad():
        logp, _ = policy.token_logprobs(ids, mask, 6)
    return logp, ids, mask


# ---- configuration and construction -------------------------------------------------------------------------------


def test_config_defaults_and_checks():
    config = PolicyConfig(lora={})
    assert config.lora == LoraConfig()
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (16, 32.0, 0.0)
    assert config.lora.target_modules == "all-linear" and not config.lora.merge_on_save
    assert PolicyConfig(lora={"target_modules": ["q_proj", "v_proj"]}).lora.target_modules == ["q_proj", "v_proj"]
    assert PolicyConfig().lora is None
    with pytest.raises(ValidationError, match="needs|add policy.lora"):
        PolicyConfig(load_in_4bit=True)
    with pytest.raises(ValidationError):
        PolicyConfig(lora={"rank": 8})  # a typo is refused, not ignored


def test_construction_trains_only_adapters_and_starts_at_the_base(tiny_model_dir):
    state = torch.get_rng_state()
    policy = Policy.from_pretrained(str(tiny_model_dir), lora=LORA)
    assert torch.equal(torch.get_rng_state(), state)  # the adapters' seed leaves the global stream alone
    assert policy.has_adapters and "LoRA r=4" in repr(policy)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # all-linear
    # B starts at zero: the initial policy is the base model
    plain = Policy.from_pretrained(str(tiny_model_dir))
    assert torch.equal(_logprobs(policy)[0], _logprobs(plain)[0])
    # the same seed gives the same adapters
    again = Policy.from_pretrained(str(tiny_model_dir), lora=LORA)
    a, b = policy.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    listed = Policy.from_pretrained(str(tiny_model_dir), lora={**LORA, "target_modules": ["q_proj", "v_proj"]})
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in listed.model.named_parameters() if p.requires_grad} == {
        "q_proj",
        "v_proj",
    }


def test_four_bit_without_bitsandbytes_or_cuda_is_a_clear_error(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="bitsandbytes and a CUDA GPU") as err:
        Policy.from_pretrained(str(tiny_model_dir), lora=LORA, load_in_4bit=True)
    assert "pip install bitsandbytes" in str(err.value) and "no CUDA GPU" in str(err.value)


def test_missing_peft_names_the_extra(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now fails
    with pytest.raises(ImportError, match=r'pip install "morl\[lora\]"'):
        Policy.from_pretrained(str(tiny_model_dir), lora=LORA)
    Policy.from_pretrained(str(tiny_model_dir))  # without lora, peft is never imported


# ---- the recipe: training, the reference, what a run writes -----------------------------------------------------


def test_recipe_trains_only_the_adapters(lora_run):
    pipe, result, initial, _ = lora_run
    rows = [row for row in result.history_ if row["kind"] == "train"]
    assert len(rows) == 2 and all(math.isfinite(row["loss"]) for row in rows)
    assert all("kl" in row and math.isfinite(row["kl"]) for row in rows)  # kl_coef > 0: the reference ran
    assert rows[-1]["kl"] > 0  # after one update the policy has left its adapter-disabled reference
    assert all(f"weights/{name}" in rows[-1] for name in pipe.objectives)
    params = dict(pipe.policy.model.named_parameters())
    lora = [n for n in params if ".lora_" in n]
    base = [n for n in params if ".lora_" not in n]
    assert all(not params[n].requires_grad and torch.equal(params[n], initial[n]) for n in base)
    assert any(not torch.equal(params[n], initial[n]) for n in lora if ".lora_B." in n)
    assert {id(p) for group in pipe.optimizer.param_groups for p in group["params"]} == {id(params[n]) for n in lora}
    # the frozen base is exactly the model on disk
    on_disk = load_file(default_model_path() / "model.safetensors")
    assert all(torch.equal(params[n], on_disk[_base_names(n)]) for n in base)


def test_reference_is_the_base_with_adapters_disabled_and_no_copy(lora_run):
    pipe, _, _, _ = lora_run
    ref = pipe.reference
    assert isinstance(ref, AdapterReference) and ref.model is pipe.policy.model
    # no copy: the reference's tensors are the policy's, so the pipeline holds one model's worth of weights
    storage = {p.untyped_storage().data_ptr() for p in pipe.policy.model.parameters()}
    assert {p.untyped_storage().data_ptr() for p in ref.model.parameters()} == storage
    assert not any(isinstance(v, torch.nn.Module) and v is not pipe.policy.model for v in vars(ref).values())
    # its log-probs are the base model's; the trained policy's differ
    plain = Policy.from_pretrained("tinymath")
    ref_logp, policy_logp, base_logp = _logprobs(ref)[0], _logprobs(pipe.policy)[0], _logprobs(plain)[0]
    torch.testing.assert_close(ref_logp, base_logp, rtol=0, atol=1e-6)
    assert not torch.allclose(policy_logp, base_logp, atol=1e-4)
    assert pipe.policy.model.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters is False  # restored
    # the fingerprint is the base's (the plain model's), independent of the adapters
    assert weights_fingerprint(ref.model) == weights_fingerprint(plain.model)


def test_run_directory_holds_the_adapter_and_a_merged_export(lora_run):
    pipe, result, _, _ = lora_run
    run = result.run_dir_
    for folder in [run / "model", *list_checkpoints(run)[0]]:
        model_dir = folder if folder.name == "model" else folder / "model"
        assert (model_dir / "adapter_model.safetensors").is_file() and (model_dir / ADAPTER_CONFIG).is_file()
        assert not (model_dir / "model.safetensors").exists()
    assert [p.name for p in list_checkpoints(run)[0]] == ["step-000001", "step-000002"]
    assert not (list_checkpoints(run)[0][-1] / "model" / "merged").exists()  # checkpoints: the adapter only
    state = json.loads((list_checkpoints(run)[0][-1] / "training_state.json").read_text())
    assert state["reference"]["adapters_disabled"] and "copy" not in state["reference"]
    assert not (run / "reference-model").exists()
    # merge_on_save: a plain model that AutoModelForCausalLM loads, with the trained policy's logits
    merged = AutoModelForCausalLM.from_pretrained(run / "model" / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    logp = _logprobs(pipe.policy)[0]
    plain = Policy(merged, pipe.policy.tokenizer)
    torch.testing.assert_close(_logprobs(plain)[0], logp, rtol=0, atol=1e-5)
    # the saved adapter loads back onto its base as the same policy
    reloaded = Policy.from_pretrained(str(run / "model"))
    assert reloaded.has_adapters
    torch.testing.assert_close(_logprobs(reloaded)[0], logp, rtol=0, atol=0)
    # a vLLM engine for the reloaded policy serves its base (and receives merged weights), not the adapter folder
    from morl.rollout_vllm import VLLMRollout, engine_kwargs

    assert reloaded.base_model_path() == pipe.policy.base_model_path() != str(run / "model")
    assert engine_kwargs(VLLMRollout.Config(), reloaded, seed=0)["model"] == pipe.policy.base_model_path()


def test_cli_eval_of_a_lora_run(lora_run, tmp_path):
    _, result, _, overrides = lora_run
    sets = [arg for o in overrides if not o.startswith("train.output_dir") for arg in ("--set", o)]
    evaluated = CliRunner().invoke(app, ["eval", str(RECIPE), "--checkpoint", str(result.run_dir_), *sets])
    assert evaluated.exit_code == 0, evaluated.output
    assert "greedy/accuracy" in evaluated.output


# ---- weights for a rollout engine ------------------------------------------------------------------------------


def test_named_full_parameters_are_merged_without_touching_the_model(tiny_model_dir):
    policy = Policy.from_pretrained(str(tiny_model_dir), lora=LORA)
    with torch.no_grad():  # adapters as if trained
        gen = torch.Generator().manual_seed(3)
        for name, p in policy.model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    pushed = dict(policy.named_full_parameters())
    expected = copy.deepcopy(policy.model).merge_and_unload().state_dict()
    assert list(pushed) == list(expected)  # the base model's names, in its order
    assert set(pushed) == set(load_file(tiny_model_dir / "model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(pushed[name], tensor, rtol=0, atol=1e-6)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(
        pushed[q_proj], before[f"base_model.model.{q_proj}".replace(".weight", ".base_layer.weight")]
    )
    after = policy.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)  # untouched
    assert policy.has_adapters and not any(m.merged for m in policy.model.modules() if hasattr(m, "merged_adapters"))


def test_shared_prompt_logprobs_with_adapters_and_disabled(lora_run):
    """Prompt sharing (one prompt pass for K completions) also runs through peft, on and off the adapters."""
    pipe, _, _, _ = lora_run
    gen = torch.Generator().manual_seed(4)
    prompt = torch.randint(4, len(pipe.policy.tokenizer), (2, 5), generator=gen).repeat_interleave(3, dim=0)
    ids = torch.cat([prompt, torch.randint(4, len(pipe.policy.tokenizer), (6, 7), generator=gen)], dim=1)
    mask = torch.ones_like(ids)
    for policy in (pipe.policy, pipe.reference):
        assert policy._can_share_prompts(ids, mask, 5, 3)
        with torch.no_grad():
            shared, _ = policy.token_logprobs(ids, mask, 5, group_size=3)
            whole, _ = policy.token_logprobs(ids, mask, 5)
        torch.testing.assert_close(shared, whole, rtol=0, atol=1e-5)


# ---- checkpoints ------------------------------------------------------------------------------------------------


def _pipeline(out: Path, steps: int) -> Pipeline:
    policy = Policy.from_pretrained("tinymath", lora=LORA)
    config = TrainConfig(
        steps=steps,
        prompts_per_step=2,
        group_size=2,
        eval_every=0,
        checkpoint_every=1,
        progress=False,
        threads=1,
        seed=5,
        lr=1e-2,
        output_dir=str(out),
    )
    return Pipeline(
        policy=policy,
        rewards=["conciseness", "clarity"],
        controller={"name": "ctwa", "targets": [0.1, 0.1]},
        algo={"name": "grpo", "kl_coef": 0.05, "minibatches": 2},
        rollout={"name": "transformers", "max_new_tokens": 24},
        config=config,
    )


def test_resume_restores_the_adapters_bit_identically(tmp_path, one_thread):
    data = make_split("train", 16, 0)
    clean = _pipeline(tmp_path / "clean", steps=4)
    clean_result = clean.fit(data)
    first = _pipeline(tmp_path / "cut", steps=2)
    first.fit(data)
    resumed = _pipeline(tmp_path / "ignored", steps=4)
    resumed_result = resumed.fit(data, resume_from=tmp_path / "cut" / "checkpoints" / "step-000002")
    assert resumed.step_count == 4
    a, b = clean.policy.model.state_dict(), resumed.policy.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    at_two = first.policy.model.state_dict()  # what the checkpoint holds, and is not vacuous: the adapters moved
    assert any(torch.count_nonzero(at_two[k]) for k in at_two if "lora_B" in k)
    assert any(not torch.equal(a[k], at_two[k]) for k in a if "lora_B" in k)  # and moved on after the resume

    def rows(result):
        return [
            {k: v for k, v in r.items() if not k.startswith(("timing/", "step_time")) and k != "segment"}
            for r in result.history_
            if r["kind"] == "train" and r["step"] > 2
        ]

    assert rows(clean_result) == rows(resumed_result)


def test_loading_checks_adapters_against_the_policy(tiny_model_dir, tmp_path):
    policy = Policy.from_pretrained(str(tiny_model_dir), lora=LORA)
    policy.save(tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="no adapters"):
        load_weights(Policy.from_pretrained(str(tiny_model_dir)), tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="whole model"):
        load_weights(policy, tiny_model_dir)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(
            Policy.from_pretrained(str(tiny_model_dir), lora={"r": 4, "target_modules": ["q_proj"]}),
            tmp_path / "adapter",
        )
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(Policy.from_pretrained(str(tiny_model_dir), lora={"r": 2, "alpha": 8}), tmp_path / "adapter")


def test_reference_pointer_is_never_a_copy_and_resume_checks_the_base(tiny_model_dir, tmp_path):
    policy = Policy.from_pretrained(str(tiny_model_dir), lora=LORA)
    policy.config = policy.config.model_copy(update={"model": "built in Python"})  # a source nobody can reload
    ref = policy.kl_reference()
    pointer = reference_pointer(ref, weights_fingerprint(ref.model), tmp_path)
    assert pointer["adapters_disabled"] and "copy" not in pointer and not list(tmp_path.iterdir())
    check_reference(ref, pointer["fingerprint"], pointer, tmp_path)  # the same base: fine
    with pytest.raises(CheckpointError, match="base model under this run's LoRA adapters"):
        check_reference(ref, "another base", pointer, tmp_path)


# ---- gradient-level controllers -----------------------------------------------------------------------------------


@pytest.fixture
def two_layer_model_dir(tiny_model_dir, tmp_path) -> Path:
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dir / name).exists():
            (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    return tmp_path


def test_select_parameters_finds_layers_in_peft_names(two_layer_model_dir):
    policy = Policy.from_pretrained(str(two_layer_model_dir), lora=LORA)
    named = {id(p): n for n, p in policy.model.named_parameters()}
    chosen = [named[id(p)] for p in select_parameters(policy.model, "last_layers:1")]
    assert chosen and all(".layers.1." in n and ".lora_" in n for n in chosen)
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight" in chosen
    everything = [named[id(p)] for p in select_parameters(policy.model, "all")]
    assert everything == [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert [named[id(p)] for p in select_parameters(policy.model, r"q_proj\.lora_A")] == [
        n for n in everything if "q_proj.lora_A" in n
    ]


@pytest.mark.parametrize("params", ["all", "last_layers:1"])
def test_mgda_on_adapter_parameters(two_layer_model_dir, tmp_path, params, one_thread):
    policy = Policy.from_pretrained(str(two_layer_model_dir), lora=LORA)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    pipe = Pipeline(
        policy=policy,
        rewards=["accuracy", "conciseness", "clarity"],
        controller={"name": "mgda", "params": params},
        algo={"name": "grpo", "kl_coef": 0.05},
        rollout={"name": "transformers", "max_new_tokens": 6},
        config=TrainConfig(
            steps=2,
            prompts_per_step=2,
            group_size=4,
            eval_every=0,
            progress=False,
            threads=1,
            lr=1e-2,
            output_dir=str(tmp_path / "run"),
        ),
    )
    assert isinstance(pipe.reference, AdapterReference)
    result = pipe.fit(make_split("train", 8, 0))
    rows = [r for r in result.history_ if r["kind"] == "train"]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert all(f"weights/{name}" in rows[-1] for name in pipe.objectives)
    after = dict(policy.model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if ".lora_" not in n)
