import json

import pytest
import torch

from morl import Pipeline, TrainConfig
from morl.rewards import RewardError
from morl.stages import Scored, Updated, Weighted
from morl.tinymath.task import make_split


def short(prompts, completions, **kwargs):
    return [1.0 if len(c) < 10 else 0.0 for c in completions]


def digits(prompts, completions, **kwargs):
    return [float(any(ch.isdigit() for ch in c)) for c in completions]


def test_step_passes_typed_records(tiny_policy, tmp_path, tiny_pipeline):
    pipe = tiny_pipeline([short, digits], controller={"name": "ctwa", "targets": [0.1, 0.1]})
    record, metrics = pipe.step(make_split("train", 2, 0))
    assert isinstance(record, Updated) and isinstance(record.weighted, Weighted) and isinstance(record.scored, Scored)
    assert record.rollout.size == 8 and record.rewards.shape == (8, 2) and record.objectives == ("short", "digits")
    assert record.clipped_weights is not None and record.clipped_weights.shape == (8,)
    assert record.new_unclipped.dtype == torch.bool and record.new_ratio.shape == record.rollout.completion_mask.shape
    assert torch.equal(record.weighted.train.advantages, record.advantages)  # the updater trained on these
    for key in ("rewards/short/mean", "rewards/digits/std", "completions/mean_length", "weights/short", "loss"):
        assert key in metrics
    assert metrics["timing/rollout"] > 0 and metrics["timing/update"] > 0


def test_fixed_controller_skips_clipped_weights(tiny_policy, tmp_path, tiny_pipeline):
    pipe = tiny_pipeline([short, digits])
    batch, _ = pipe.step(make_split("train", 2, 0))
    assert batch.clipped_weights is None  # nobody needs it, nobody pays for it


def parity(prompts, completions, **kwargs):
    """Varies within almost every group of random completions, so advantages are not all zero."""
    return [float(sum(map(ord, c)) % 2) for c in completions]


def test_update_changes_parameters_and_zero_advantage_does_not(tiny_policy, tmp_path, tiny_pipeline):
    before = [p.detach().clone() for p in tiny_policy.model.parameters()]
    pipe = tiny_pipeline([parity])
    batch, _ = pipe.step(make_split("train", 2, 0))
    assert not torch.all(batch.advantages == 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, tiny_policy.model.parameters()))

    def constant(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    frozen = [p.detach().clone() for p in tiny_policy.model.parameters()]
    pipe = tiny_pipeline([constant])
    batch, _ = pipe.step(make_split("train", 2, 0))
    assert torch.all(batch.advantages == 0)  # no signal: the gradient is zero and AdamW (no decay) moves nothing
    assert all(torch.equal(a, b) for a, b in zip(frozen, tiny_policy.model.parameters()))


def test_fit_writes_run_directory(tiny_policy, tmp_path, tiny_pipeline):
    from transformers import AutoModelForCausalLM

    pipe = tiny_pipeline([short, digits], controller={"name": "ctwa", "targets": [0.1, 0.1]})
    result = pipe.fit(make_split("train", 20, 0), make_split("eval", 4, 0))
    rows = [json.loads(line) for line in (result.run_dir_ / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["eval", "train", "train", "eval"]
    assert "eval/greedy/short" in rows[0] and "eval/sampled/mean_length" in rows[-1]
    AutoModelForCausalLM.from_pretrained(result.run_dir_ / "model")
    state = json.loads((result.run_dir_ / "training_state.json").read_text())
    assert state["step"] == 2 and len(state["parts"]["controller"]["state"]["u_"]) == 2
    assert state["parts"]["controller"]["class"] == "morl.controllers.ctwa.CTWA"


def test_reward_that_raises_names_the_sample(tiny_policy, tmp_path):
    def fragile(prompts, completions, **kwargs):
        if len(completions) > 1:
            raise ZeroDivisionError("boom")
        return [1.0]

    pipe = Pipeline(
        policy=tiny_policy,
        rewards=[fragile],
        config=TrainConfig(steps=1, prompts_per_step=1, group_size=2, progress=False),
        rollout={"name": "transformers", "max_new_tokens": 4},
    )
    # batched call raises, one-by-one call succeeds: the error still surfaces with the objective name
    with pytest.raises(RewardError, match="fragile"):
        pipe.step(make_split("train", 1, 0))


def test_reward_wrong_count_and_nan(tiny_policy, tmp_path):
    def wrong_count(prompts, completions, **kwargs):
        return [1.0]

    def nan_reward(prompts, completions, **kwargs):
        return [float("nan")] * len(completions)

    for fn, pattern in ((wrong_count, "returned 1 values for 4"), (nan_reward, r"returned nan for sample 0")):
        pipe = Pipeline(
            policy=tiny_policy,
            rewards=[fn],
            config=TrainConfig(steps=1, prompts_per_step=2, group_size=2, progress=False),
            rollout={"name": "transformers", "max_new_tokens": 4},
        )
        with pytest.raises(RewardError, match=pattern) as info:
            pipe.step(make_split("train", 2, 0))
        if fn is nan_reward:
            assert "prompt:" in str(info.value) and "completion:" in str(info.value)


def test_duplicate_objective_names_rejected(tiny_policy):
    pipe = Pipeline(policy=tiny_policy, rewards=[short, short])  # stores what it is given, as scikit-learn does
    with pytest.raises(ValueError, match="unique"):
        pipe.validate()  # built and checked on first use (fit, step), or now


def test_print_pipeline_shows_its_components(tiny_policy, tmp_path, tiny_pipeline):
    pipe = tiny_pipeline([short, digits], controller={"name": "ctwa", "targets": [0.1, 0.2]})
    text = repr(pipe)
    assert text.startswith("Pipeline(\n") and "controller=CTWA(targets=[0.1, 0.2]" in text
    assert "algo=GRPO(" in text and "rewards=[<function short" in text and "config=TrainConfig(steps=2" in text


# ---- a scikit-learn-style estimator --------------------------------------------------------------------------


def test_init_stores_the_specs_and_builds_nothing(tiny_policy, tmp_path, tiny_pipeline):
    controller = {"name": "ctwa", "targets": [0.1, 0.1]}
    pipe = tiny_pipeline([short, digits], controller=controller, algo="grpo")
    assert pipe.controller is controller and pipe.algo == "grpo"  # stored as given
    assert "trainer_" not in vars(pipe)  # built on first use
    assert pipe.get_params(deep=False)["controller"] is controller


def test_get_params_deep_names_every_components_parameters(tiny_policy, tmp_path, tiny_pipeline):
    params = tiny_pipeline([short, digits], controller="ctwa").get_params(deep=True)
    assert params["controller__lr"] == 0.05 and params["algo__clip_low"] == 0.2
    assert params["config__steps"] == 2 and params["rollout__max_new_tokens"] == 12


def test_set_params_changes_a_components_parameter_and_rebuilds(tiny_policy, tmp_path, tiny_pipeline):
    pipe = tiny_pipeline([short, digits], controller={"name": "ctwa", "targets": [0.1, 0.1]})
    pipe.step(make_split("train", 2, 0))
    assert pipe.set_params(controller__lr=0.25, config__steps=3) is pipe
    assert pipe.get_params()["controller__lr"] == 0.25 and pipe.get_params()["controller__targets"] == [0.1, 0.1]
    assert pipe.parts_.controller.config.lr == 0.25 and pipe.step_count == 0  # built again: nothing carried over
    assert pipe.config.steps == 3
    with pytest.raises(ValueError, match="no parameter 'controler'"):
        pipe.set_params(controler__lr=1.0)


def test_clone_is_unfitted_and_independent(tiny_policy, tmp_path, tiny_pipeline):
    pipe = tiny_pipeline([short, digits], controller={"name": "ctwa", "targets": [0.1, 0.1]})
    copy = pipe.clone()
    assert repr(copy) == repr(pipe) and copy.policy is not pipe.policy
    before = [p.detach().clone() for p in pipe.policy.model.parameters()]
    copy.step(make_split("train", 2, 0))
    assert copy.step_count == 1 and pipe.step_count == 0
    assert all(torch.equal(a, b) for a, b in zip(before, pipe.policy.model.parameters()))  # the original untouched


def test_fit_returns_the_fitted_pipeline_and_fitresult_fields_warn(tiny_policy, tmp_path, tiny_pipeline):
    pipe = tiny_pipeline([short, digits])
    fitted = pipe.fit(make_split("train", 4, 0), make_split("eval", 2, 0))
    assert fitted is pipe and pipe.run_dir_ == tmp_path / "run"
    assert [row["step"] for row in pipe.evals_] == [0, 2] and pipe.hub_url_ is None
    assert [row["step"] for row in pipe.history_ if row["kind"] == "train"] == [1, 2]
    with pytest.warns(DeprecationWarning, match="run_dir_"):
        assert pipe.run_dir == pipe.run_dir_  # FitResult's old field, for one release
    with pytest.warns(DeprecationWarning, match="history_"):
        assert pipe.history == pipe.history_


def test_trls_metric_names_are_logged_with_trls_meaning(tiny_pipeline):
    pipe = tiny_pipeline([short, digits], algo={"name": "grpo", "minibatches": 2})
    record, metrics = pipe.step(make_split("train", 2, 0))
    rollout = record.rollout
    lengths = rollout.completion_lengths.float()
    eos = pipe.policy.tokenizer.eos_token_id
    ended = ((rollout.completion_ids == eos) & rollout.completion_mask.bool()).any(dim=1)
    assert metrics["completions/min_length"] == lengths.min().item()
    assert metrics["completions/clipped_ratio"] == pytest.approx((~ended).float().mean().item())
    expected_max = lengths[ended].max().item() if ended.any() else 0.0
    assert metrics["completions/max_terminated_length"] == expected_max
    flat = record.scores.view(-1, 4).std(dim=1, unbiased=False) < 1e-8
    assert metrics["frac_reward_zero_std"] == pytest.approx(flat.float().mean().item())
    assert metrics["num_tokens"] == int(rollout.attention_mask.sum()) and metrics["step_time"] > 0
    assert metrics["clip_ratio/low_min"] <= metrics["clip_ratio/low_mean"] <= 1.0  # over the 2 optimizer steps
    assert metrics["clip_ratio/high_max"] >= metrics["clip_ratio/high_mean"] >= 0.0
    _, second = pipe.step(make_split("train", 2, 1))
    assert second["num_tokens"] > metrics["num_tokens"]  # cumulative, as TRL's
