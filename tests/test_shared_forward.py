"""Grouped completions' log-probs: prompts once, completions in passes that skip the padding after their ends."""

from __future__ import annotations

import itertools

import pytest
import torch

from morl.shared_forward import completion_passes


def _cost(lengths: list[int], ends: tuple[int, ...], width: int, pass_cost: float) -> float:
    """Positions computed by passes ending at ``ends``, plus each pass's fixed cost (written out, not the DP)."""
    starts = (0, *ends[:-1])
    computed = sum(sum(length > start for length in lengths) * (end - start) for start, end in zip(starts, ends))
    return computed + len(ends) * pass_cost * len(lengths) * width


@pytest.mark.parametrize(
    "lengths, pass_cost",
    [
        ([3, 3, 3, 3, 3, 30, 30, 30], 1 / 16),
        ([1, 5, 9, 12, 20, 20, 27, 31], 1 / 16),
        ([1, 5, 9, 12, 20, 20, 27, 31], 0.001),
        ([31, 31, 30, 31], 1 / 16),
        ([0, 0, 7, 2], 0.01),
    ],
)
def test_passes_are_the_cheapest_split(lengths, pass_cost):
    width = 31
    passes = completion_passes(lengths, width, pass_cost)
    # contiguous from column 0 to the longest completion
    assert passes[0][0] == 0 and passes[-1][1] == max(lengths)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(passes))
    # 8 rows or fewer: every distinct length is a candidate end, so brute force over all subsets is the reference
    inner = sorted({length for length in lengths if 0 < length < max(lengths)})
    best = min(
        _cost(lengths, (*split, max(lengths)), width, pass_cost)
        for r in range(len(inner) + 1)
        for split in itertools.combinations(inner, r)
    )
    assert _cost(lengths, tuple(end for _, end in passes), width, pass_cost) == pytest.approx(best)


def test_nothing_to_compute_and_no_split_worth_its_cost():
    assert completion_passes([0, 0, 0], 10) == []
    assert completion_passes([10, 9, 10, 10], 10) == [(0, 10)]


def _grouped_batch(policy, lengths: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Groups of identical left-padded prompts (lengths 4, 6, ...) with completions of the given lengths."""
    generator = torch.Generator().manual_seed(0)
    vocab = policy.model.config.vocab_size
    prompt_width = 2 + 2 * len(lengths)
    rows, masks = [], []
    for g, group in enumerate(lengths):
        prompt_len = 4 + 2 * g
        prompt = torch.randint(2, vocab, (prompt_len,), generator=generator)
        for length in group:
            ids = torch.zeros(prompt_width + width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            ids[prompt_width - prompt_len : prompt_width] = prompt
            mask[prompt_width - prompt_len : prompt_width + length] = 1
            ids[prompt_width : prompt_width + length] = torch.randint(2, vocab, (length,), generator=generator)
            rows.append(ids)
            masks.append(mask)
    return torch.stack(rows), torch.stack(masks), prompt_width


def test_passes_give_whole_rows_logprobs_and_gradients(tiny_policy):
    policy = tiny_policy
    lengths = [[3, 30, 2, 3], [30, 3, 29, 3], [12, 3, 30, 1]]
    ids, mask, prompt_width = _grouped_batch(policy, lengths, width=30)
    completion = mask[:, prompt_width:].float()
    calls = []
    hook = policy.model.register_forward_hook(lambda *_: calls.append(1))

    def logprobs_and_grads(group_size: int):
        policy.model.zero_grad(set_to_none=True)
        calls.clear()
        logp, entropy = policy.token_logprobs(ids, mask, prompt_width, 0.7, with_entropy=True, group_size=group_size)
        ((logp + 0.1 * entropy) * completion).sum().backward()
        return logp.detach(), entropy.detach(), [p.grad.clone() for p in policy.model.parameters()], len(calls)

    logp, entropy, grads, passes = logprobs_and_grads(group_size=4)
    whole_logp, whole_entropy, whole_grads, whole_passes = logprobs_and_grads(group_size=1)
    hook.remove()
    assert whole_passes == 1 and passes >= 3  # the prompts, then at least two passes over completion columns
    assert torch.allclose(logp * completion, whole_logp * completion, atol=1e-5)
    assert torch.allclose(entropy * completion, whole_entropy * completion, atol=1e-5)
    for a, b in zip(grads, whole_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # after each row's end nothing is computed: log-prob and entropy 0
    assert torch.all(logp[completion == 0] == 0) and torch.all(entropy[completion == 0] == 0)


def test_an_infinite_pass_cost_makes_one_pass():
    assert completion_passes([1, 2, 30, 30], 30, pass_cost=float("inf")) == [(0, 30)]
