"""The log-prob helper process: the same numbers as this process, on the parameters as they are at submit time."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from morl.evaluation import split_examples
from morl.policy import batch_logprobs
from morl.rollout import TransformersRollout
from morl.side_process import LogprobProcess
from morl.tinymath.task import make_split

START_S = 120  # the helper imports torch and transformers: seconds on an idle machine, more under a parallel suite


@pytest.fixture
def batch(tiny_policy):
    torch.manual_seed(0)
    prompts, columns = split_examples(make_split("train", 3, 0))
    return TransformersRollout(max_new_tokens=8).generate(tiny_policy, prompts, columns, 4)


@pytest.fixture
def helper(tiny_policy):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the helper takes this process's thread count: the same roundings
    process = LogprobProcess(tiny_policy)
    yield process
    process.close()
    torch.set_num_threads(threads)


def test_the_helper_reads_the_parameters_as_they_are_when_a_pass_is_submitted(tiny_policy, batch, helper):
    assert helper.ready(wait_s=START_S), helper.failure
    assert helper.submit(batch, 1.0, None)
    assert torch.equal(helper.result(), batch_logprobs(tiny_policy, batch, 1.0))  # bit for bit, one thread each
    before = batch_logprobs(tiny_policy, batch, 1.0)
    with torch.no_grad():  # an optimizer step changes the parameters in place
        for p in tiny_policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert helper.submit(batch, 0.7, 2)  # another temperature, and rows in chunks of 2 (the groups split)
    moved = helper.result()
    assert torch.equal(moved, batch_logprobs(tiny_policy, batch, 0.7, 2))
    assert not torch.allclose(moved, before)
    assert helper.served == 2
    # the batch went to the helper as bytes: a tensor moved into shared memory while training reads it can read freed
    # memory (what torch's queues do, on their own thread)
    assert not any(t.is_shared() for t in (batch.input_ids, batch.attention_mask, batch.completion_mask))


def test_one_pass_at_a_time_and_none_before_the_helper_is_up(tiny_policy, batch, helper):
    with pytest.raises(RuntimeError, match="without a submitted pass"):
        helper.result()
    assert helper.ready(wait_s=START_S)
    assert helper.submit(batch, 1.0, None)
    assert not helper.submit(batch, 1.0, None)  # busy: the caller computes this one itself
    helper.result()


def test_a_helper_that_dies_is_reported_and_leaves_the_pass_to_this_process(batch, helper):
    assert helper.ready(wait_s=START_S)
    assert helper.submit(batch, 1.0, None)
    helper.result()
    os.kill(helper.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while helper.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.warns(RuntimeWarning, match="helper process exited"):
        assert not helper.submit(batch, 1.0, None)
    assert "exited" in helper.failure
    assert not helper.ready() and not helper.submit(batch, 1.0, None)


def test_a_bfloat16_policy_gets_its_log_probs_back_bit_for_bit(tiny_policy, batch):
    from morl.policy import Policy

    policy = Policy(tiny_policy.model.to(torch.bfloat16), tiny_policy.tokenizer, tiny_policy.config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    helper = LogprobProcess(policy)
    try:
        assert helper.ready(wait_s=START_S), helper.failure
        assert helper.submit(batch, 1.0, None)
        got, expected = helper.result(), batch_logprobs(policy, batch, 1.0)
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    finally:
        helper.close()
        torch.set_num_threads(threads)
