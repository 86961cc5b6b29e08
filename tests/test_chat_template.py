"""Chat templates for instruct models: a row's chat ``messages`` (verl parquet) go through the tokenizer's template
when ``policy.chat_template`` is on; ``data.prompt_template`` turns raw problems into the trained instruction."""

from __future__ import annotations

import copy

import pytest

from morl.data import DataError, load_examples
from morl.policy import Policy, PolicyConfig
from morl.rollout import TransformersRollout

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture
def chat_policy(tiny_policy):
    tokenizer = copy.deepcopy(tiny_policy.tokenizer)  # the session's tokenizer stays without a template
    tokenizer.chat_template = TEMPLATE
    return Policy(tiny_policy.model, tokenizer, PolicyConfig(chat_template=True))


def test_messages_go_through_the_chat_template(chat_policy):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    assert chat_policy.format_prompt("1+1?", messages) == "<system>Be brief.\n<user>1+1?\n<assistant>"
    assert chat_policy.format_prompt("2+2?") == "<user>2+2?\n<assistant>"  # no messages: one user turn
    plain = Policy(chat_policy.model, chat_policy.tokenizer, PolicyConfig(chat_template=False))
    assert plain.format_prompt("1+1?", messages) == "1+1?"


def test_rollout_samples_from_the_templated_prompt(chat_policy):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    batch = TransformersRollout(max_new_tokens=4).generate(
        chat_policy, ["1+1?"], {"answer": ["2"], "messages": [messages]}, 2
    )
    prompt = chat_policy.tokenizer.decode(batch.input_ids[0, : batch.prompt_width], skip_special_tokens=True)
    assert prompt == "<system>Be brief.\n<user>1+1?\n<assistant>"
    assert batch.columns["messages"] == [messages, messages] and batch.prompts == ["1+1?", "1+1?"]


def test_a_template_is_needed_when_asked_for(tiny_policy):
    policy = Policy(tiny_policy.model, tiny_policy.tokenizer, PolicyConfig(chat_template=True))
    assert policy.tokenizer.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        policy.format_prompt("1+1?")


def test_verl_parquet_messages_reach_the_chat_template(math500_dir, chat_policy):
    rows = load_examples(str(math500_dir), "train", limit=2)
    assert rows[0]["messages"][-1]["role"] == "user"
    text = chat_policy.format_prompt(rows[0]["prompt"], rows[0]["messages"])
    assert text == f"<user>{rows[0]['prompt']}\n<assistant>" and "\\boxed{}" in text


def test_prompt_template_rewrites_prompts_and_user_turns(tmp_path, math500_dir):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"problem": "What is 1+1?", "answer": "2"}\n')
    suffix = " Let's think step by step and output the final answer within \\boxed{}."
    rows = load_examples(str(raw), prompt_template="{prompt}" + suffix)
    assert rows[0]["prompt"] == "What is 1+1?" + suffix and "{prompt}" not in rows[0]["prompt"]
    verl = load_examples(str(math500_dir), "val", limit=1, prompt_template="Q: {prompt}")
    assert verl[0]["prompt"].startswith("Q: ") and verl[0]["messages"][-1]["content"] == verl[0]["prompt"]
    with pytest.raises(DataError, match=r"\{prompt\}"):
        load_examples(str(raw), prompt_template="no placeholder")
