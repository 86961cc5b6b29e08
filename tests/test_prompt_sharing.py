"""Prompt sharing: K completions of one prompt reuse its KV cache, with the same numbers as whole rows."""

from __future__ import annotations

import pytest
import torch

from morl import policy as policy_module
from morl.evaluation import split_examples
from morl.rollout import TransformersRollout
from morl.tinymath.task import make_split


@pytest.fixture
def rollout_batch(tiny_policy):
    torch.manual_seed(0)
    prompts, columns = split_examples(make_split("train", 3, 0))
    return tiny_policy, TransformersRollout(max_new_tokens=8).generate(tiny_policy, prompts, columns, 4)


def _unshared(monkeypatch) -> None:
    monkeypatch.setattr(policy_module, "_forward_arguments", lambda model: frozenset())


def test_shared_logprobs_and_gradients_match_whole_rows(rollout_batch, monkeypatch):
    policy, batch = rollout_batch
    args = (batch.input_ids, batch.attention_mask, batch.prompt_width)
    assert policy._can_share_prompts(*args, batch.group_size)

    def logprobs_and_grads():
        policy.model.zero_grad(set_to_none=True)
        logp, entropy = policy.token_logprobs(*args, with_entropy=True, group_size=batch.group_size)
        ((logp + entropy) * batch.completion_mask).sum().backward()
        grads = [p.grad.clone() for p in policy.model.parameters()]
        return logp.detach() * batch.completion_mask, grads

    shared, shared_grads = logprobs_and_grads()
    _unshared(monkeypatch)
    whole, whole_grads = logprobs_and_grads()
    assert torch.allclose(shared, whole, atol=1e-5)
    for a, b in zip(shared_grads, whole_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_rows_with_different_prompts_are_not_shared(rollout_batch):
    policy, batch = rollout_batch
    # claim groups of 8 over groups of 4: two different prompts in a "group"
    assert not policy._can_share_prompts(batch.input_ids, batch.attention_mask, batch.prompt_width, 8)
    shuffled = torch.randperm(batch.size, generator=torch.Generator().manual_seed(0))
    ids, mask = batch.input_ids[shuffled], batch.attention_mask[shuffled]
    assert not policy._can_share_prompts(ids, mask, batch.prompt_width, batch.group_size)
    logp, _ = policy.token_logprobs(ids, mask, batch.prompt_width, group_size=batch.group_size)
    direct, _ = policy.token_logprobs(ids, mask, batch.prompt_width)
    assert torch.equal(logp, direct)


def test_shared_prefill_samples_the_same_completions(tiny_policy, monkeypatch):
    prompts, columns = split_examples(make_split("train", 3, 1))
    rollout = TransformersRollout(max_new_tokens=8)
    torch.manual_seed(3)
    shared = rollout.generate(tiny_policy, prompts, columns, 4)
    _unshared(monkeypatch)
    torch.manual_seed(3)
    whole = rollout.generate(tiny_policy, prompts, columns, 4)
    assert torch.equal(shared.input_ids, whole.input_ids)
    assert torch.allclose(shared.old_logprobs, whole.old_logprobs, atol=1e-5)


def test_greedy_evaluation_with_a_preallocated_cache_is_unchanged(tiny_policy, monkeypatch):
    prompts, columns = split_examples(make_split("eval", 5, 0))
    rollout = TransformersRollout(max_new_tokens=12)
    fast = rollout.generate(tiny_policy, prompts, columns, 1, greedy=True)
    _unshared(monkeypatch)
    plain = rollout.generate(tiny_policy, prompts, columns, 1, greedy=True)
    assert torch.equal(fast.input_ids, plain.input_ids)


def test_growing_cache_falls_back_once_full(tiny_policy):
    ids = torch.tensor([[5, 6, 7, 8]])
    (cache,) = tiny_policy.prompt_cache(ids, torch.ones_like(ids), new_tokens=1).values()
    layer = cache.layers[0]
    assert type(layer).__name__ == "GrowingLayer" and layer.keys.shape[-2] == 3
    key = torch.ones(1, layer.keys.shape[1], 1, layer.keys.shape[-1])
    for expected in (4, 5, 6):  # room for 2 (the prompt's last token and 1 new one), then concatenation
        keys, _ = layer.update(key, key)
        assert keys.shape[-2] == expected and torch.equal(keys[..., -1:, :], key)


def test_select_keeps_groups_only_for_whole_consecutive_groups(rollout_batch):
    _, batch = rollout_batch  # 3 groups of 4
    assert batch.select(torch.arange(12)).group_size == 4
    assert batch.select(torch.arange(4, 12)).group_size == 4
    assert batch.select(slice(4, 8)).group_size == 4
    assert batch.select(torch.arange(2, 10)).group_size == 1
    assert batch.select(torch.tensor([4, 5, 7, 6])).group_size == 1
    assert batch.select(slice(0, 6)).group_size == 1
