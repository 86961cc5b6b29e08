"""The vLLM rollout backend without vLLM: registry, install message, sampling parameters, batch assembly, the
sleep/wake/weight-push protocol against a fake engine, and the importance-sampling correction it feeds."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from types import SimpleNamespace

import pytest
import torch

from morl.algos.importance import importance_metrics, importance_weights
from morl.batch import Batch
from morl.components import _REGISTRY, RecipeError, build, registered
from morl.rollout_vllm import VLLMRollout, assemble_batch, engine_model, sampling_kwargs


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
    """What the backend uses of ``vllm.LLM``: generate, sleep, wake_up(tags), reset_prefix_cache, the model."""

    def __init__(self, tokens: list[int], eos: int) -> None:
        self.calls: list[str] = []
        self.loaded: list[str] = []
        model = SimpleNamespace(load_weights=lambda weights: self.loaded.extend(name for name, _ in weights))
        worker = SimpleNamespace(worker=SimpleNamespace(model_runner=SimpleNamespace(model=model)))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker))
        self.tokens, self.eos = tokens, eos

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(f"generate n={params['n']}")
        completion = [*self.tokens, self.eos]
        logprobs = [{t: SimpleNamespace(logprob=-0.5)} for t in completion]
        out = SimpleNamespace(token_ids=completion, logprobs=logprobs)
        return [SimpleNamespace(outputs=[out] * params["n"]) for _ in prompts]

    def sleep(self, level):
        self.calls.append(f"sleep {level}")

    def wake_up(self, tags=None):
        self.calls.append(f"wake {','.join(tags)}")

    def reset_prefix_cache(self):
        self.calls.append("reset")


def test_engine_protocol_pushes_weights_only_after_updates(tiny_policy):
    tok = tiny_policy.tokenizer
    rollout = VLLMRollout(max_new_tokens=8)
    llm = FakeLLM(tok("12", add_special_tokens=False)["input_ids"], tok.eos_token_id)
    rollout._llm = llm
    rollout._sampling_params = lambda kwargs: kwargs  # no vllm.SamplingParams here
    batch = rollout.generate(tiny_policy, ["1 + 1 = ?"], {"answer": ["2"]}, 3)
    assert batch.completions == ["12"] * 3 and batch.sampling_logprobs.tolist() == [[-0.5] * 3] * 3
    names = [name for name, _ in tiny_policy.model.state_dict().items()]
    assert llm.loaded == names  # the first generation pushes the trainer's weights
    assert llm.calls == ["reset", "generate n=3", "sleep 1"]
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
