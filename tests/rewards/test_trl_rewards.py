"""TRL's shipped reward functions, and rewards written for TRL's GRPOTrainer, run through morl unchanged.

Each reward is called twice on the same data: the way GRPOTrainer calls it (every argument by keyword, chat
completions as ``[{"role": "assistant", "content": ...}]``) and through morl (``score_rewards``, ``Pipeline``).
The two must agree, ``None`` (not applicable) included.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import trl
import trl.rewards
from trl.rewards import (
    accuracy_reward,
    get_cosine_scaled_reward,
    get_repetition_penalty_reward,
    get_soft_overlong_punishment,
    reasoning_accuracy_reward,
    think_format_reward,
)

from morl.pipeline import Pipeline, TrainConfig
from morl.rewards import Accuracy, Clarity, Conciseness, StepInfo, objective_name, score_rewards

QUESTIONS = ["What is 1/3 of 1?", "What is 1 + 1?", "Name a colour.", "What is 2 + 2?"]
SOLUTIONS = [r"\frac{1}{3}", "2", "blue, but not a number", "4"]  # the third one math-verify cannot parse: None
COMPLETIONS = [
    "<think>\nOne third.\n</think>\nThe answer is \\boxed{\\frac{1}{3}}",
    "<think>\n1 + 1 = 3\n</think>\n\\boxed{3}",
    "blue blue blue blue blue",
    "Steps: 2 + 2 = 4, so \\boxed{4}",
]
COMPLETION_IDS = [[5, 6, 7] * 30, [8, 9, 2], [4, 4, 4, 4, 4, 4, 4, 4], list(range(95))]
STATE = StepInfo(global_step=7, max_steps=20)


def _chat_prompts() -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": "Think, then answer."}, {"role": "user", "content": q}] for q in QUESTIONS]


def _morl(rewards: list[Any], *, chat: bool) -> dict[str, list[float | None]]:
    """Each objective's values through morl, None where it says not applicable."""
    columns: dict[str, list[Any]] = {"answer": list(SOLUTIONS), "solution": list(SOLUTIONS)}
    if chat:
        columns["messages"] = _chat_prompts()
    matrix, skipped = score_rewards(
        rewards,
        list(QUESTIONS),
        list(COMPLETIONS),
        columns,
        training=True,
        completion_lengths=[len(ids) for ids in COMPLETION_IDS],
        completion_ids=COMPLETION_IDS,
        trainer_state=STATE,
    )
    assert all(count == 0 for count in skipped.values())
    return {
        objective_name(r): [None if math.isnan(v) else v for v in matrix[:, m].tolist()] for m, r in enumerate(rewards)
    }


def _trl(reward: Any, *, chat: bool) -> list[float | None]:
    """The values GRPOTrainer would get: every argument by keyword, the dataset columns beside them."""
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS] if chat else list(COMPLETIONS)
    return reward(
        prompts=_chat_prompts() if chat else list(QUESTIONS),
        completions=completions,
        completion_ids=COMPLETION_IDS,
        trainer_state=STATE,
        solution=list(SOLUTIONS),
    )


CONVERSATIONAL = {  # TRL's rewards that read ``completion[0]["content"]``: they need chat data, as in TRL
    "accuracy_reward": accuracy_reward,
    "reasoning_accuracy_reward": reasoning_accuracy_reward,
    "think_format_reward": think_format_reward,
    "get_cosine_scaled_reward": get_cosine_scaled_reward(max_len=100),
}
TOKEN_IDS = {  # TRL's rewards that read ``completion_ids`` only: any data
    "get_soft_overlong_punishment": get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=20),
    "get_repetition_penalty_reward": get_repetition_penalty_reward(ngram_size=3),
}


def test_every_reward_trl_ships_is_covered():
    shipped = {name for name in trl.rewards.__all__ if not name.endswith("_rewards")}  # leave out the submodules
    assert shipped == set(CONVERSATIONAL) | set(TOKEN_IDS), f"TRL {trl.__version__} ships another reward: test it"


@pytest.mark.parametrize("key", sorted(CONVERSATIONAL))
def test_trl_reward_on_chat_data_matches_calling_it_the_trl_way(key):
    reward = CONVERSATIONAL[key]
    expected = _trl(reward, chat=True)
    assert _morl([reward], chat=True)[objective_name(reward)] == pytest.approx(expected)
    assert len(set(map(str, expected))) > 1  # the data tells the values apart (not all 0, not all None)


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("key", sorted(TOKEN_IDS))
def test_trl_token_id_reward_matches_calling_it_the_trl_way(key, chat):
    reward = TOKEN_IDS[key]
    expected = _trl(reward, chat=chat)
    assert _morl([reward], chat=chat)[objective_name(reward)] == pytest.approx(expected)
    assert len(set(expected)) > 1


def test_trl_rewards_and_morl_builtins_score_side_by_side():
    """One call, TRL's rewards beside morl's rules: each gets its own shape (chat for TRL's, text for morl's)."""
    rewards = [think_format_reward, accuracy_reward, Accuracy(), Clarity(), Conciseness()]
    got = _morl(rewards, chat=True)
    assert got["think_format_reward"] == [1.0, 1.0, 0.0, 0.0]
    assert got["accuracy_reward"] == [1.0, 0.0, None, 1.0]
    assert got["accuracy"] == [1.0, 0.0, 0.0, 1.0]  # morl's rule: the last box against the ``answer`` column
    assert got["clarity"] == [0.0, 0.0, 0.0, 0.0]
    assert got["conciseness"] == [0.0, 1.0, 1.0, 0.0]  # lengths 90, 3, 8, 95: mean 49


def format_reward(completions, **kwargs):
    """A reward as written in TRL's docs for GRPOTrainer: completions only, the rest swallowed."""
    return [1.0 if c[0]["content"].startswith("<think>") else 0.0 for c in completions]


def plain_format_reward(completions, **kwargs):
    """The same for plain-text data, where TRL passes strings."""
    return [1.0 if c.startswith("<think>") else 0.0 for c in completions]


def scheduled_length_penalty(completion_ids, trainer_state, **kwargs):
    """Reads the token ids and the schedule, as a curriculum reward in TRL does."""
    ramp = min(1.0, trainer_state.global_step / trainer_state.max_steps)
    return [-ramp * len(ids) / 100 for ids in completion_ids]


def test_user_trl_rewards_run_unchanged():
    assert _morl([format_reward], chat=True)["format_reward"] == [1.0, 1.0, 0.0, 0.0]
    assert _morl([plain_format_reward], chat=False)["plain_format_reward"] == [1.0, 1.0, 0.0, 0.0]
    values = _morl([scheduled_length_penalty], chat=False)["scheduled_length_penalty"]
    assert values == pytest.approx([-0.35 * 90 / 100, -0.35 * 3 / 100, -0.35 * 8 / 100, -0.35 * 95 / 100])
    assert values == pytest.approx(_trl(scheduled_length_penalty, chat=False))


def test_a_trl_reward_that_fails_on_one_sample_is_skipped_there_only():
    """With ``on_error="skip"`` the one-by-one retry passes the same keywords, so only the bad sample is lost."""

    def picky(completions, completion_ids, **kwargs):
        if any(len(ids) == 3 for ids in completion_ids):
            raise ValueError("too short to judge")
        return [float(len(c[0]["content"])) for c in completions]

    matrix, skipped = score_rewards(
        [picky],
        list(QUESTIONS),
        list(COMPLETIONS),
        {"messages": _chat_prompts()},
        training=True,
        completion_ids=COMPLETION_IDS,
        on_error="skip",
    )
    values = matrix[:, 0].tolist()
    assert math.isnan(values[1]) and skipped == {"picky": 1}
    assert [values[i] for i in (0, 2, 3)] == [float(len(COMPLETIONS[i])) for i in (0, 2, 3)]


# ---- through the pipeline, as a user writes it ------------------------------------------------------------------


def _chat_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "prompt": f"{i} + 1 =",
            "answer": str(i + 1),
            "solution": str(i + 1),
            "messages": [{"role": "user", "content": f"{i} + 1 ="}],
        }
        for i in range(n)
    ]


def _pipeline(policy: Any, tmp_path: Any, rewards: list[Any]) -> Pipeline:
    config = TrainConfig(steps=1, prompts_per_step=2, group_size=3, output_dir=str(tmp_path / "run"), progress=False)
    return Pipeline(
        policy=policy, rewards=rewards, config=config, rollout={"name": "transformers", "max_new_tokens": 10}
    )


def test_pipeline_trains_on_trl_rewards(tiny_policy, tmp_path):
    pipe = _pipeline(tiny_policy, tmp_path, [think_format_reward, accuracy_reward, format_reward])
    record, metrics = pipe.step(_chat_rows(2))
    rollout = record.rollout
    chat = [[{"role": "assistant", "content": c}] for c in rollout.completions]
    for m, reward in enumerate((think_format_reward, accuracy_reward, format_reward)):
        expected = reward(prompts=rollout.columns["messages"], completions=chat, solution=rollout.columns["solution"])
        expected = [math.nan if v is None else v for v in expected]
        assert torch.allclose(record.rewards[:, m], torch.tensor(expected), equal_nan=True)
    assert "rewards/think_format_reward/mean" in metrics


def test_pipeline_passes_completion_ids_and_trainer_state(tiny_policy, tmp_path):
    seen: list[tuple[list[list[int]], int]] = []

    def spy(completion_ids, trainer_state, **kwargs):
        seen.append((completion_ids, trainer_state.global_step))
        return [float(len(ids)) for ids in completion_ids]

    overlong = get_soft_overlong_punishment(max_completion_len=8, soft_punish_cache=4)
    pipe = _pipeline(tiny_policy, tmp_path, [spy, overlong])
    record, _ = pipe.step(_chat_rows(2))
    rollout = record.rollout
    ids = [row[mask.bool()].tolist() for row, mask in zip(rollout.completion_ids, rollout.completion_mask)]
    assert seen == [(ids, 0)]
    assert record.rewards[:, 0].tolist() == rollout.completion_lengths.float().tolist()
    assert record.rewards[:, 1].tolist() == pytest.approx(overlong(completion_ids=ids))


def test_a_trl_reward_factory_with_parameters_goes_in_a_recipe(tmp_path):
    """TRL's reward factories take parameters and return the reward function; a recipe names the factory with its
    parameters, builds the reward, and records the same node so the run's recipe.yaml re-runs it."""
    from morl.components import RecipeError as Refused
    from morl.components import build, spec_of

    trl_rewards = pytest.importorskip("trl.rewards")
    name = "trl.rewards.get_soft_overlong_punishment"
    reward = build("reward", {"name": name, "max_completion_len": 64, "soft_punish_cache": 16})
    assert reward(completion_ids=[[1] * 10, [1] * 60]) == [0.0, pytest.approx(-12 / 16)]
    assert spec_of("reward", reward) == {"name": name, "max_completion_len": 64, "soft_punish_cache": 16}
    assert trl_rewards.get_soft_overlong_punishment  # the factory itself, named bare, is refused with the fix:
    with pytest.raises(Refused, match=r"does not take completions.*give its parameters.*max_completion_len"):
        build("reward", name)
    with pytest.raises(Refused, match="unexpected keyword"):
        build("reward", {"name": name, "max_len": 64})
