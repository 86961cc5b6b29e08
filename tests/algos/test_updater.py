"""The updater: micro-batches weighted by their share of the loss's normaliser give the full-batch gradient."""

import copy

import pytest
import torch

from morl.algos import GRPO, Updater
from morl.batch import Batch

LENGTHS = [5, 1, 3, 2, 4, 5, 1, 2]  # unequal, so token, sequence and constant normalisers split differently


def _batch(policy) -> Batch:
    """8 completions (2 groups of 4) of random tokens with the lengths above, behind a 2-token prompt; old and
    reference log-probs perturbed so that ratios clip and the KL is not 0."""
    gen = torch.Generator().manual_seed(0)
    n, width, length = len(LENGTHS), 2, max(LENGTHS)
    mask = (torch.arange(length) < torch.tensor(LENGTHS).unsqueeze(1)).long()
    vocab = len(policy.tokenizer)
    ids = torch.randint(4, vocab, (n, width + length), generator=gen)
    ids[:, width:] = ids[:, width:] * mask
    batch = Batch(
        prompts=["p"] * n,
        completions=["c"] * n,
        columns={},
        group_size=4,
        input_ids=ids,
        attention_mask=torch.cat([torch.ones(n, width, dtype=torch.long), mask], dim=1),
        completion_mask=mask,
        prompt_width=width,
        advantages=torch.randn(n, generator=gen),
    )
    with torch.no_grad():
        logp, _ = policy.token_logprobs(batch.input_ids, batch.attention_mask, width)
    batch.old_logprobs = (logp + 0.3 * torch.randn(logp.shape, generator=gen)) * mask
    batch.ref_logprobs = (batch.old_logprobs - 0.1 * torch.rand(logp.shape, generator=gen)) * mask
    return batch


def _sgd_step(policy, algo, batch):
    """Parameters after one SGD step of lr 1 (no gradient clipping): p - ∇loss."""
    policy = copy.deepcopy(policy)
    metrics = algo.update(policy, torch.optim.SGD(policy.model.parameters(), lr=1.0), batch)
    return [p.detach().clone() for p in policy.model.parameters()], metrics


@pytest.mark.parametrize(
    "axes",
    [
        {"loss_type": "grpo"},
        {"loss_type": "bnpo"},
        {"loss_type": "dapo"},
        {"loss_type": "dr_grpo"},
        {"loss_type": "dr_grpo", "max_completion_length": 8},
        {"loss_type": "grpo", "importance_sampling_level": "sequence", "clip_low": 0.05, "clip_high": 0.08},
    ],
    ids=lambda axes: "-".join(str(v) for v in axes.values()),
)
def test_micro_batches_give_the_full_batch_gradient(tiny_policy, axes):
    batch = _batch(tiny_policy)
    common = {"kl_coef": 0.1, "entropy_coef": 0.01, "max_grad_norm": None, **axes}
    # the full-batch gradient, written out: one forward pass over every row, the loss, its gradient
    expected_policy = copy.deepcopy(tiny_policy)
    algo = GRPO(**common)
    logp, entropy = algo.logprobs(expected_policy, batch)
    out = algo.loss(logp, batch, entropy=entropy)
    grads = torch.autograd.grad(out.loss, list(expected_policy.model.parameters()))
    expected = [p.detach() - g for p, g in zip(expected_policy.model.parameters(), grads)]
    assert 0 < float(out.stats["clip_ratio/region_mean"]) < 1  # the clip binds on some tokens
    for micro in (None, 3, 5):
        params, metrics = _sgd_step(tiny_policy, GRPO(micro_batch_size=micro, **common), batch)
        for got, want in zip(params, expected):
            torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
        assert metrics["loss"] == pytest.approx(out.loss.item(), abs=1e-6)
        assert metrics["kl"] == pytest.approx(float(out.stats["kl"]), abs=1e-6)  # token means over the mini-batch


def test_token_share_weighting_would_be_wrong_for_sequence_means(tiny_policy):
    # why the updater weights by the normaliser: for grpo, token-share weights give another gradient
    batch = _batch(tiny_policy)
    whole, _ = _sgd_step(tiny_policy, GRPO(loss_type="grpo", max_grad_norm=None), batch)
    policy = copy.deepcopy(tiny_policy)
    algo = GRPO(loss_type="grpo", max_grad_norm=None)
    updater = Updater(max_grad_norm=None, micro_batch_size=3)
    by_tokens = updater.update(
        policy,
        torch.optim.SGD(policy.model.parameters(), lr=1.0),
        batch,
        algo.minibatch_loss,
        lambda mask: float(mask.sum()),  # completion tokens: right for bnpo only
    )
    assert by_tokens["grad_norm"] > 0
    differs = any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, policy.model.parameters()))
    assert differs


def test_nonfinite_step_is_skipped(tiny_policy):
    batch = _batch(tiny_policy)
    batch.advantages[0] = float("nan")
    before = [p.detach().clone() for p in tiny_policy.model.parameters()]
    params, metrics = _sgd_step(tiny_policy, GRPO(), batch)
    assert metrics["skipped_nonfinite"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_epochs_and_minibatches_count_steps(tiny_policy):
    batch = _batch(tiny_policy)
    steps = []
    policy = copy.deepcopy(tiny_policy)
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.0)
    optimizer.step = lambda *a, **k: steps.append(1)  # count the optimiser steps
    algo = GRPO()
    metrics = Updater(epochs=2, minibatches=2).update(
        policy, optimizer, batch, algo.minibatch_loss, algo.policy_loss.normaliser, torch.Generator().manual_seed(0)
    )
    assert len(steps) == 4 and "grad_norm" in metrics and not policy.model.training


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_processes_sum_to_the_full_batch_gradient(tiny_policy, monkeypatch, loss_type):
    """Two processes, simulated one after the other: each trains on its half of the rows (``local_rows``) with
    the normalisers summed over both, and the sum of their gradients is the one-process gradient."""
    from morl import distributed

    batch = _batch(tiny_policy)
    algo = GRPO(loss_type=loss_type, kl_coef=0.1, max_grad_norm=None, micro_batch_size=3)
    halves = [slice(0, 4), slice(4, 8)]
    # each process's [micro-batch, (normaliser, tokens)] over its rows, as the updater computes them
    local = [
        torch.tensor(
            [[algo.policy_loss.normaliser(m), float(m.sum())] for m in batch.completion_mask[h].split(3)],
            dtype=torch.float64,
        )
        for h in halves
    ]

    def gradient(rows, other):
        policy = copy.deepcopy(tiny_policy)
        optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.0)
        calls = iter([lambda t: t + other, lambda t: t])  # first the normalisers, then the statistics
        monkeypatch.setattr(distributed, "all_reduce_sum", lambda t: next(calls)(t))
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        part = copy.copy(batch)
        part.local_rows = rows
        algo.update(policy, optimizer, part)
        return [p.grad.clone() for p in policy.model.parameters()]

    summed = [a + b for a, b in zip(gradient(halves[0], local[1]), gradient(halves[1], local[0]))]
    monkeypatch.undo()
    logp, entropy = algo.logprobs(tiny_policy, batch)
    expected = torch.autograd.grad(algo.loss(logp, batch, entropy=entropy).loss, list(tiny_policy.model.parameters()))
    for got, want in zip(summed, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
