"""What :func:`score_rewards` passes a reward: every argument by keyword, in the shape the reward reads."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from morl.components import ComponentConfig
from morl.rewards import RESERVED_ARGUMENTS, RewardFn, StepInfo, score_rewards

CHAT = [
    [{"role": "user", "content": "1+1?"}],
    [{"role": "system", "content": "Brief."}, {"role": "user", "content": "2"}],
]


class Recorder(RewardFn):
    """Keeps the keyword arguments of its last call; scores 0."""

    class Config(ComponentConfig):
        pass

    def __call__(self, **arguments: Any) -> list[float | None]:  # keywords only: a positional call would fail
        self.seen = arguments
        return [0.0] * len(arguments["completions"])


class ChatRecorder(Recorder):
    conversational: ClassVar[bool] = True


def _seen(reward: Any, columns: dict[str, list[Any]], **options: Any) -> dict[str, Any]:
    score_rewards([reward], ["1+1?", "2"], ["2", "3"], columns, training=True, **options)
    return reward.seen


def test_every_argument_is_a_keyword_and_the_extras_are_there():
    state = StepInfo(global_step=3, max_steps=10, epoch=0.5)
    seen = _seen(
        Recorder(),
        {"answer": ["2", "3"]},
        completion_lengths=[1, 4],
        completion_ids=[[7], [8, 9, 1]],
        trainer_state=state,
    )
    assert seen == {
        "prompts": ["1+1?", "2"],
        "completions": ["2", "3"],
        "answer": ["2", "3"],
        "completion_lengths": [1, 4],
        "completion_ids": [[7], [8, 9, 1]],
        "trainer_state": state,
        "training": True,
    }


def test_unknown_ids_and_step_are_left_out_not_faked():
    seen = _seen(Recorder(), {"answer": ["2", "3"]})
    assert "completion_ids" not in seen and "trainer_state" not in seen
    assert seen["completion_lengths"] == [1, 1]  # characters when the caller has no token counts


def test_chat_data_reaches_plain_functions_and_conversational_rewards_as_messages():
    got: dict[str, Any] = {}

    def trl_style(prompts, completions, **kwargs):
        got.update(prompts=prompts, completions=completions)
        return [1.0] * len(completions)

    score_rewards([trl_style], ["1+1?", "2"], ["2", "3"], {"messages": CHAT}, training=False)
    assert got["prompts"] == CHAT
    assert got["completions"] == [[{"role": "assistant", "content": "2"}], [{"role": "assistant", "content": "3"}]]
    chat = _seen(ChatRecorder(), {"messages": CHAT})
    assert chat["prompts"] == CHAT and chat["completions"][1] == [{"role": "assistant", "content": "3"}]
    text = _seen(Recorder(), {"messages": CHAT})  # morl's rules read text whatever the data
    assert text["prompts"] == ["1+1?", "2"] and text["completions"] == ["2", "3"] and text["messages"] == CHAT


def test_rows_without_chat_messages_stay_text():
    seen: dict[str, Any] = {}

    def trl_style(completions, **kwargs):
        seen["completions"] = completions
        return [1.0] * len(completions)

    score_rewards([trl_style], ["a", "b"], ["2", "3"], {"messages": [CHAT[0], None]}, training=False)
    assert seen["completions"] == ["2", "3"]  # one row without messages: the batch is not conversational


@pytest.mark.parametrize("column", RESERVED_ARGUMENTS)
def test_a_column_named_like_an_argument_is_refused(column):
    with pytest.raises(ValueError, match=f"dataset column '{column}' has the name of an argument"):
        score_rewards([Recorder()], ["p"], ["c"], {column: ["x"]}, training=False)


def test_lists_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match=r"1 values in 'completion_ids' for 2 completions"):
        score_rewards([Recorder()], ["p", "q"], ["c", "d"], {}, training=False, completion_ids=[[1]])
    with pytest.raises(ValueError, match=r"3 values in 'answer' for 2 completions"):
        score_rewards([Recorder()], ["p", "q"], ["c", "d"], {"answer": ["1", "2", "3"]}, training=False)


def test_every_built_in_reward_takes_its_own_call_time_limit():
    """The README's per-reward ``call_timeout_s`` is a setting of every built-in reward (a recipe field)."""
    from morl.components import build, registered
    from morl.rewards.guard import call_limit

    for name in registered("reward"):
        spec = {"name": name, "call_timeout_s": 5}
        if name == "reward_model":
            spec["model"] = "unused-until-called"
        assert call_limit(build("reward", spec), 60.0) == 5.0, name
    assert call_limit(build("reward", "accuracy"), 60.0) == 60.0  # none of its own: train.reward_timeout_s
