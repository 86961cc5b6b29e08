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


def _pipeline(policy, tmp_path, **kwargs):
    config = TrainConfig(steps=2, prompts_per_step=2, group_size=4, output_dir=str(tmp_path / "run"), progress=False)
    options = {"rollout": {"name": "transformers", "max_new_tokens": 12}, "rewards": [short, digits], **kwargs}
    return Pipeline(policy=policy, config=config, **options)


def test_step_passes_typed_records(tiny_policy, tmp_path):
    pipe = _pipeline(tiny_policy, tmp_path, controller={"name": "ctwa", "targets": [0.1, 0.1]})
    record, metrics = pipe.step(make_split("train", 2, 0))
    assert isinstance(record, Updated) and isinstance(record.weighted, Weighted) and isinstance(record.scored, Scored)
    assert record.rollout.size == 8 and record.rewards.shape == (8, 2) and record.objectives == ("short", "digits")
    assert record.clipped_weights is not None and record.clipped_weights.shape == (8,)
    assert record.new_unclipped.dtype == torch.bool and record.new_ratio.shape == record.rollout.completion_mask.shape
    assert torch.equal(record.weighted.train.advantages, record.advantages)  # the updater trained on these
    for key in ("rewards/short/mean", "rewards/digits/std", "completions/mean_length", "weights/short", "loss"):
        assert key in metrics
    assert metrics["timing/rollout"] > 0 and metrics["timing/update"] > 0


def test_fixed_controller_skips_clipped_weights(tiny_policy, tmp_path):
    pipe = _pipeline(tiny_policy, tmp_path)
    batch, _ = pipe.step(make_split("train", 2, 0))
    assert batch.clipped_weights is None  # nobody needs it, nobody pays for it


def parity(prompts, completions, **kwargs):
    """Varies within almost every group of random completions, so advantages are not all zero."""
    return [float(sum(map(ord, c)) % 2) for c in completions]


def test_update_changes_parameters_and_zero_advantage_does_not(tiny_policy, tmp_path):
    before = [p.detach().clone() for p in tiny_policy.model.parameters()]
    pipe = _pipeline(tiny_policy, tmp_path, rewards=[parity])
    batch, _ = pipe.step(make_split("train", 2, 0))
    assert not torch.all(batch.advantages == 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, tiny_policy.model.parameters()))

    def constant(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    frozen = [p.detach().clone() for p in tiny_policy.model.parameters()]
    pipe = _pipeline(tiny_policy, tmp_path, rewards=[constant])
    batch, _ = pipe.step(make_split("train", 2, 0))
    assert torch.all(batch.advantages == 0)  # no signal: the gradient is zero and AdamW (no decay) moves nothing
    assert all(torch.equal(a, b) for a, b in zip(frozen, tiny_policy.model.parameters()))


def test_fit_writes_run_directory(tiny_policy, tmp_path):
    from transformers import AutoModelForCausalLM

    pipe = _pipeline(tiny_policy, tmp_path, controller={"name": "ctwa", "targets": [0.1, 0.1]})
    result = pipe.fit(make_split("train", 20, 0), make_split("eval", 4, 0))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["eval", "train", "train", "eval"]
    assert "eval/greedy/short" in rows[0] and "eval/sampled/mean_length" in rows[-1]
    AutoModelForCausalLM.from_pretrained(result.run_dir / "model")
    state = json.loads((result.run_dir / "training_state.json").read_text())
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
    with pytest.raises(ValueError, match="unique"):
        Pipeline(policy=tiny_policy, rewards=[short, short])


def test_print_pipeline_shows_its_components(tiny_policy, tmp_path):
    pipe = _pipeline(tiny_policy, tmp_path, controller={"name": "ctwa", "targets": [0.1, 0.2]})
    text = repr(pipe)
    assert text.startswith("Pipeline(\n") and "controller=CTWA(targets=[0.1, 0.2]" in text
    assert "algo=GRPO(" in text and "rewards=[<function short" in text and "config=TrainConfig(steps=2" in text
