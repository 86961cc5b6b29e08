"""Hostile completions, broken rewards, non-finite steps, bad recipes, bad data: no hang, no crash, clear errors."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from morl import Pipeline, TrainConfig
from morl.checkpoint import MARKER, list_checkpoints
from morl.cli import app
from morl.components import RecipeError
from morl.pipeline import NonFiniteError
from morl.recipe import build_components, load_recipe, parse_recipe
from morl.rewards import Accuracy, Clarity, Conciseness, RewardError, RewardFn, score_rewards
from morl.rewards.accuracy import _KILL_GRACE_S
from morl.rollout import TransformersRollout
from morl.tinymath.task import make_split

TIMEOUT_S = 0.5
#: One sample may take its limit, the kill grace and a restart of the checker process.
SAMPLE_WALL_S = TIMEOUT_S + _KILL_GRACE_S + 1.5


def flat(text: str) -> str:
    """Rich wraps long lines; compare messages with their whitespace collapsed."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def builtin_rewards():
    acc = Accuracy(timeout_s=TIMEOUT_S)
    acc(["p"], [r"\boxed{1}"], answer=["2"])  # the checker process starts before any clock runs
    return [acc, Conciseness(), Clarity()]


# ---- hostile completions ----------------------------------------------------------------------------------------

HOSTILE = [
    r"\boxed{" + "9" * 5000 + "}",  # huge number
    r"\boxed{10^{10^{10}}}",  # small text, astronomically large value: the checker's own timer stops it
    r"\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",  # deeply nested
    r"\boxed{\frac{1}{2}" + "}" * 50 + "{" * 3000,  # unbalanced
    r"\boxed{" + r"\frac{x^{2}+1}{\sqrt{y}}+" * 400 + "1}",  # 10k characters of LaTeX
    r"\boxed{1}" * 3000,  # a box repeated thousands of times
    r"\boxed{" * 5000,
    b"1. \\boxed{\xff\xfe\x80\xc3(}".decode("utf-8", errors="surrogateescape"),  # non-UTF-8 bytes
    "\\boxed{\ud800\udfff\x00\x1b[31m}",  # lone surrogates, NUL, escape codes
    "",
]


def test_a_batch_of_hostile_completions_is_scored_in_bounded_time(builtin_rewards):
    acc = builtin_rewards[0]
    timeouts_before = acc.timeouts_
    n = len(HOSTILE)
    start = time.perf_counter()
    matrix, skipped = score_rewards(
        builtin_rewards, ["p"] * n, HOSTILE, {"answer": ["4"] * n}, training=True, completion_lengths=[10] * n
    )
    assert time.perf_counter() - start < 3 * SAMPLE_WALL_S  # at most a few samples ever reach the checker
    assert set(matrix[:, 1:].flatten().tolist()) <= {0.0, 1.0}
    assert matrix[:, 0].tolist() == [0.0] * n  # every hostile answer is wrong, the one cut off at its limit too
    assert skipped == {"accuracy": 0, "conciseness": 0, "clarity": 0}
    assert acc.timeouts_ == timeouts_before + 1  # 10^{10^{10}}: cut off, scored incorrect, and counted


class HostileRollout(TransformersRollout):
    """The real rollout (token ids, masks, log-probs), with the decoded text swapped for hostile completions."""

    def generate(self, policy, prompts, columns, k, *, greedy=False):
        batch = super().generate(policy, prompts, columns, k, greedy=greedy)
        batch.completions = [HOSTILE[i % len(HOSTILE)] for i in range(batch.size)]
        return batch


def test_a_training_step_survives_hostile_completions_and_logs_timeouts(tiny_policy, builtin_rewards):
    pipe = Pipeline(
        policy=tiny_policy,
        rewards=builtin_rewards,
        rollout=HostileRollout(max_new_tokens=4),
        config=TrainConfig(steps=1, prompts_per_step=2, group_size=5, progress=False),
    )
    start = time.perf_counter()
    _, metrics = pipe.step(make_split("train", 2, 0))
    assert time.perf_counter() - start < 3 * SAMPLE_WALL_S
    assert metrics["rewards/accuracy/timeouts"] >= 1
    assert math.isfinite(metrics["loss"])


_ANY_TEXT = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=100),  # surrogates included
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", errors="surrogateescape")),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_ANY_TEXT, prefix=st.sampled_from(["", "\\boxed{", "Step 1: \\boxed{1}\n2. "]), close=st.booleans())
def test_fuzz_builtin_rewards_on_arbitrary_strings(builtin_rewards, text, prefix, close):
    """Complements the per-reward fuzz tests (token alphabets) with arbitrary Unicode and undecodable bytes."""
    completion = prefix + text + ("}" if close else "")
    start = time.perf_counter()
    for training in (True, False):
        matrix, skipped = score_rewards(builtin_rewards, ["p"], [completion], {"answer": ["1"]}, training=training)
        assert set(matrix[0].tolist()) <= {0.0, 1.0} and not any(skipped.values())
    assert time.perf_counter() - start < 2 * SAMPLE_WALL_S


# ---- user rewards that misbehave ------------------------------------------------------------------------------

PROMPTS = ["what is 1+1?", "what is 2+2?", "what is 3+3?"]
COMPLETIONS = ["2", "bad four", "6"]


def raises_on_bad(prompts, completions, **kwargs):
    if any("bad" in c for c in completions):
        raise ValueError("cannot score this")
    return [1.0] * len(completions)


def nan_on_bad(prompts, completions, **kwargs):
    return [math.nan if "bad" in c else 1.0 for c in completions]


def inf_on_bad(prompts, completions, **kwargs):
    return [math.inf if "bad" in c else 1.0 for c in completions]


def overflow_on_bad(prompts, completions, **kwargs):
    return [1e300 if "bad" in c else 1.0 for c in completions]  # finite as a double, inf as float32


def text_on_bad(prompts, completions, **kwargs):
    return ["1.0" if "bad" in c else 1.0 for c in completions]


def one_value(prompts, completions, **kwargs):
    return [1.0]


def a_scalar(prompts, completions, **kwargs):
    return 1.0


PER_SAMPLE = [raises_on_bad, nan_on_bad, inf_on_bad, overflow_on_bad, text_on_bad]


@pytest.mark.parametrize("fn", PER_SAMPLE, ids=lambda f: f.__name__)
def test_a_failing_sample_stops_with_objective_prompt_and_completion(fn):
    with pytest.raises(RewardError) as info:
        score_rewards([fn], PROMPTS, COMPLETIONS, {}, training=True)
    message = str(info.value)
    assert fn.__name__ in message and "what is 2+2?" in message and "bad four" in message


@pytest.mark.parametrize("fn", PER_SAMPLE, ids=lambda f: f.__name__)
def test_skip_marks_only_the_failing_sample_and_counts_it(fn):
    matrix, skipped = score_rewards([fn, nan_on_bad], PROMPTS, COMPLETIONS, {}, training=True, on_error="skip")
    assert matrix[:, 0].tolist()[0::2] == [1.0, 1.0] and math.isnan(matrix[1, 0])
    assert skipped == {fn.__name__: 1, "nan_on_bad": 1}


@pytest.mark.parametrize(("fn", "pattern"), [(one_value, "returned 1 values for 3"), (a_scalar, "returned a float")])
def test_wrong_number_of_values(fn, pattern):
    with pytest.raises(RewardError, match=pattern) as info:
        score_rewards([fn], PROMPTS, COMPLETIONS, {}, training=True)
    assert fn.__name__ in str(info.value) and "what is 1+1?" in str(info.value)
    matrix, skipped = score_rewards([fn], PROMPTS, COMPLETIONS, {}, training=True, on_error="skip")
    assert torch.isnan(matrix).all() and skipped == {fn.__name__: 3}


class CarelessCounter(RewardFn):
    """Breaks the rule: it learns from the batch *before* it finds the sample it cannot score."""

    name = "careless"

    def __call__(self, prompts, completions, *, training=True, **columns):
        if training:
            self.seen_ = getattr(self, "seen_", 0) + len(completions)
        if any("bad" in c for c in completions):
            raise ValueError("cannot score this")
        return [1.0] * len(completions)


def test_a_stateful_reward_learns_from_each_training_batch_once():
    reward = CarelessCounter()
    _, skipped = score_rewards([reward], PROMPTS, COMPLETIONS, {}, training=True, on_error="skip")
    assert skipped == {"careless": 1}
    assert reward.seen_ == 2  # the two good samples, once: not 3 (the failed call) + 3 (retried one by one)
    with pytest.raises(RewardError, match="bad four"):
        score_rewards([reward], PROMPTS, COMPLETIONS, {}, training=True)
    assert reward.seen_ == 2  # a call that failed left no trace
    score_rewards([reward], PROMPTS, COMPLETIONS, {}, training=False, on_error="skip")
    assert reward.seen_ == 2  # evaluation never learns


def test_a_fresh_stateful_reward_that_fails_has_no_state_afterwards():
    reward = CarelessCounter()
    with pytest.raises(RewardError):
        score_rewards([reward], ["p"], ["bad"], {}, training=True)
    assert reward.state_dict() == {}


def flaky(prompts, completions, **kwargs):
    if any(len(c) % 3 == 0 for c in completions):
        raise RuntimeError("flaky reward")
    return [float(len(c) % 2) for c in completions]


def test_skip_policy_end_to_end(tiny_policy, tmp_path):
    pipe = Pipeline(
        policy=tiny_policy,
        rewards=[flaky, "conciseness"],
        rollout={"name": "transformers", "max_new_tokens": 6},
        config=TrainConfig(
            steps=3, prompts_per_step=2, group_size=4, on_reward_error="skip", progress=False, output_dir=str(tmp_path)
        ),
    )
    result = pipe.fit(make_split("train", 8, 0))
    rows = [r for r in result.history_ if r["kind"] == "train"]
    assert len(rows) == 3
    assert sum(r.get("rewards/flaky/skipped", 0) for r in rows) > 0
    assert all(math.isfinite(r["loss"]) for r in rows)


# ---- non-finite loss or gradients ------------------------------------------------------------------------------


def _poison_training_forward(policy, steps: set[int] | None, pipe_ref: list):
    """NaN logits in the update's forward passes (generation stays healthy), on the given steps or all."""
    model = policy.model
    original = model.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        step = pipe_ref[0].step_count + 1 if pipe_ref else None
        if model.training and (steps is None or step in steps):
            out.logits = out.logits * math.nan
        return out

    model.forward = forward


def _nonfinite_pipeline(policy, tmp_path, **train):
    config = TrainConfig(
        **{
            "steps": 6,
            "prompts_per_step": 2,
            "group_size": 2,
            "progress": False,
            "checkpoint_every": 0,
            "output_dir": str(tmp_path / "run"),
            **train,
        }
    )
    return Pipeline(
        policy=policy,
        rewards=["conciseness", "clarity"],
        rollout={"name": "transformers", "max_new_tokens": 4},
        config=config,
    )


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tiny_policy, tmp_path):
    before = {k: v.clone() for k, v in tiny_policy.model.state_dict().items()}
    pipe = _nonfinite_pipeline(tiny_policy, tmp_path, max_nonfinite_steps=3)
    _poison_training_forward(tiny_policy, None, [pipe])
    with pytest.raises(NonFiniteError) as info:
        pipe.fit(make_split("train", 8, 0))
    message = str(info.value)
    assert "step 3" in message and "3 steps in a row" in message and "max_nonfinite_steps=3" in message
    run = tmp_path / "run"
    assert f"last good checkpoint: {run / 'checkpoints' / 'step-000003'}" in message
    assert (run / "checkpoints" / "step-000003" / MARKER).is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_steps"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    after = tiny_policy.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no NaN ever reached the parameters


def test_an_isolated_nonfinite_step_is_skipped_and_training_goes_on(tiny_policy, tmp_path):
    pipe = _nonfinite_pipeline(tiny_policy, tmp_path, steps=4, max_nonfinite_steps=2)
    _poison_training_forward(tiny_policy, {2}, [pipe])
    result = pipe.fit(make_split("train", 8, 0))
    rows = [r for r in result.history_ if r["kind"] == "train"]
    assert [r["train/skipped_steps"] for r in rows] == [0, 1, 1, 1]
    assert rows[1].get("skipped_nonfinite") == 1.0 and pipe.nonfinite_streak == 0
    assert [p.name for p in list_checkpoints(result.run_dir_)[0]] == ["step-000004"]
    assert all(torch.isfinite(p).all() for p in tiny_policy.model.parameters())


# ---- recipes ----------------------------------------------------------------------------------------------------

BAD_RECIPES = {
    "unknown section": ({"trian": {"steps": 3}}, r"trian: unknown field"),
    "unknown key": ({"train": {"stpes": 3}}, r"train.stpes: unknown field"),
    "wrong type": ({"train": {"steps": "many"}}, r"train.steps: .*valid integer"),
    "negative learning rate": ({"train": {"lr": -1e-5}}, r"train.lr: .*greater than 0"),
    "K < 2": ({"train": {"group_size": 1}}, r"train.group_size: .*greater than or equal to 2"),
    "negative checkpoint interval": ({"train": {"checkpoint_every": -1}}, r"train.checkpoint_every"),
    "keep no checkpoint": ({"train": {"keep_checkpoints": 0}}, r"train.keep_checkpoints"),
    "no non-finite budget": ({"train": {"max_nonfinite_steps": 0}}, r"train.max_nonfinite_steps"),
    "weights of the wrong length": (
        {"controller": {"name": "fixed", "weights": [0.5, 0.5]}},
        r"controller.weights: 2 values for 3 objectives",
    ),
    "targets for a missing objective": (
        {"controller": {"name": "ctwa", "targets": {"accuracy": 0.1, "brevity": 0.1, "clarity": 0.1}}},
        r"controller.targets: unknown objective\(s\) \['brevity'\]",
    ),
    "unknown reward parameter": (
        {"rewards": ["accuracy", {"name": "clarity"}, {"name": "conciseness", "x": 1}]},
        r"(?s)rewards\[2\]: Conciseness: .*x: unknown field",
    ),
    "reward parameter out of range": (
        {"rewards": [{"name": "accuracy", "timeout_s": -1}]},
        r"(?s)rewards\[0\]: Accuracy: .*timeout_s: .*greater than 0",
    ),
    "algorithm parameter out of range": ({"algo": {"name": "grpo", "clip_low": 1.5}}, r"(?s)algo: GRPO: .*clip_low"),
    "duplicate objectives": ({"rewards": ["accuracy", "accuracy"]}, r"objective names must be unique"),
    "no objectives": ({"rewards": []}, r"rewards: give at least one objective"),
    "unknown dtype": ({"policy": {"dtype": "float8"}}, r"policy.dtype"),
}


@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_bad_recipe_fails_before_any_model_loads_naming_the_field(case, tmp_path):
    raw, pattern = BAD_RECIPES[case]
    raw = {"policy": {"model": str(tmp_path / "no-such-model")}, **raw}  # loading it would fail differently
    with pytest.raises(RecipeError, match=pattern):
        build_components(parse_recipe(raw))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output


def test_yaml_is_parsed_safely(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)
    path.write_text("- a list\n- not a mapping\n")
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        load_recipe(path)


def test_validate_accepts_a_good_recipe_without_loading_the_model(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("policy: {model: /no/such/model}\ncontroller: {name: ctwa, lr: 0.5}\ntrain: {steps: 3}\n")
    result = CliRunner().invoke(app, ["validate", str(path), "--set", "train.lr=0.001"])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output and "CTWA(" in result.output
    missing = CliRunner().invoke(app, ["validate", str(tmp_path / "absent.yaml")])
    assert missing.exit_code == 2 and "recipe not found" in flat(missing.output)


# ---- datasets ---------------------------------------------------------------------------------------------------


def _fit_with_data(tmp_path: Path, model: str, data: dict, rollout: dict | None = None):
    recipe = {
        "policy": {"model": model},
        "data": {"train_size": None, "eval": None, **data},
        "rewards": ["accuracy", "conciseness", "clarity"],
        "rollout": rollout or {"name": "transformers", "max_new_tokens": 4},
        "train": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "progress": False},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return CliRunner().invoke(app, ["fit", str(path), "--output-dir", str(tmp_path / "run")])


def _jsonl(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "the dataset is empty"),
        (['{"prompt": "1+1", "answer": "2"}', '{"prompt": "2+2", "answer": '], "line 2: malformed JSON"),
        (['{"prompt": "1+1", "answer": "2"}', '{"prompt": "2+2"}'], "row 1 has no answer"),
        (['{"prompt": "1+1", "answer": "2"}', '["not", "an", "object"]'], "line 2: expected a JSON object"),
        (['{"answer": "2"}'], "row 0 has no prompt"),
    ],
    ids=["empty", "malformed", "no ground truth", "not an object", "no prompt"],
)
def test_bad_dataset_fails_before_any_model_loads(tmp_path, lines, message):
    result = _fit_with_data(tmp_path, str(tmp_path / "no-such-model"), {"train": _jsonl(tmp_path, lines)})
    assert result.exit_code == 2, result.output
    assert message in flat(result.output) and "Traceback" not in result.output


def test_a_prompt_over_the_limit_is_named_before_training_or_truncated(tmp_path, tiny_model_dir):
    data = {
        "train": _jsonl(
            tmp_path, ['{"prompt": "1+1=", "answer": "2"}', '{"prompt": "' + "9+" * 40 + '1", "answer": "x"}']
        )
    }
    rollout = {"name": "transformers", "max_new_tokens": 4, "max_prompt_tokens": 20}
    result = _fit_with_data(tmp_path, str(tiny_model_dir), data, rollout)
    assert result.exit_code == 2, result.output
    assert "train row 1: the prompt has" in flat(result.output) and "max_prompt_tokens=20" in flat(result.output)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before the first step
    result = _fit_with_data(tmp_path, str(tiny_model_dir), data, {**rollout, "truncate_prompts": True})
    assert result.exit_code == 0, result.output


def test_a_column_a_reward_needs_is_checked_before_training(tmp_path, tiny_model_dir):
    recipe = {
        "policy": {"model": str(tiny_model_dir)},
        "data": {"train": _jsonl(tmp_path, ['{"prompt": "1+1=", "answer": "2"}']), "eval": None},
        "rewards": [{"name": "accuracy", "answer_column": "solution"}, "conciseness"],
        "train": {"steps": 1, "prompts_per_step": 1, "group_size": 2, "progress": False},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["fit", str(path), "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "train row 0 has no 'solution' column, which reward 'accuracy' needs" in flat(result.output)


def test_a_missing_model_is_a_clear_error(tmp_path):
    result = _fit_with_data(tmp_path, str(tmp_path / "no-such-model"), {"train": "tinymath", "train_size": 4})
    assert result.exit_code == 2 and "cannot load policy.model=" in flat(result.output)


def always_raises(prompts, completions, **kwargs):
    raise ZeroDivisionError("this reward is broken")


def test_cli_reports_a_broken_reward_with_its_name_and_exit_code_1(tmp_path, tiny_model_dir):
    recipe = {
        "policy": {"model": str(tiny_model_dir)},
        "data": {"train_size": 4, "eval": None},
        "rewards": ["conciseness", "tests.test_robustness.always_raises"],
        "rollout": {"name": "transformers", "max_new_tokens": 4},
        "train": {"steps": 1, "prompts_per_step": 1, "group_size": 2, "progress": False},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["fit", str(path), "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    text = flat(result.output)
    assert "reward 'always_raises' raised ZeroDivisionError: this reward is broken" in text and "prompt:" in text
