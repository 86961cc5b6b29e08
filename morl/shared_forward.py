"""Teacher-forced log-probs of grouped completions, without recomputing shared prompts or the padding after an end.

A GRPO batch holds K completions of each prompt, left-padded prompts and right-padded completions. A forward pass
over whole rows computes every prompt K times and every column up to the longest completion for every row. Here:

- each distinct prompt goes through the model once; its KV cache, repeated K times, is the past of the completions;
- the completion columns go through in a few passes (:func:`completion_passes`): rows sorted by length, each pass
  covers a range of columns for only the rows still running there, its past being the cache of the columns before.

Attention sees the same keys as in a whole-row pass, so the log-probs (and their gradients) are the same function,
to float rounding. Positions after a row's last real token are not computed: their log-prob and entropy are 0,
which masked losses never read. On the quickstart's batches (64 rows, completions of 3-53 tokens) the training
forward and backward take 0.90 of the time of one pass over every completion column, and 0.43 of a pass over whole
rows (``benchmarks/training_forward.py``).
"""

from __future__ import annotations

import functools
import math

import torch

# a pass's fixed cost (launches, per-layer operators), as a share of one pass over every row and column: a further
# pass is worth it only if it skips more padded positions than this
PASS_COST = 1 / 16
MAX_BOUNDARIES = 8  # candidate column boundaries: completion lengths at evenly spaced ranks


def completion_passes(lengths: list[int], width: int, pass_cost: float = PASS_COST) -> list[tuple[int, int]]:
    """Column ranges ``[start, end)`` of the passes over completions that need ``lengths`` columns each (of
    ``width``), minimising ``Σ (rows running at start) · (end − start) + pass_cost · rows · width`` over splits at
    up to :data:`MAX_BOUNDARIES` candidate lengths. A row runs in a pass if its length exceeds the pass's start.

    Example:
        >>> completion_passes([10, 10, 10, 40], 40, pass_cost=0.05)  # 3 short rows stop after 10 columns
        [(0, 10), (10, 40)]
        >>> completion_passes([40, 40, 39, 40], 40)  # nothing worth a second pass
        [(0, 40)]
    """
    need = sorted((min(max(length, 0), width) for length in lengths), reverse=True)
    if not need or need[0] == 0:
        return []
    last = need[0]
    if math.isinf(pass_cost):
        return [(0, last)]
    ranks = range(0, len(need), max(1, len(need) // MAX_BOUNDARIES))
    candidates = sorted({need[r] for r in ranks if 0 < need[r] < last} | {last})
    fixed = pass_cost * len(need) * width

    def running(start: int) -> int:
        return sum(length > start for length in need)

    @functools.cache
    def cheapest(start: int) -> tuple[float, tuple[int, ...]]:
        if start >= last:
            return 0.0, ()
        rows = running(start)
        options = []
        for end in candidates:
            if end > start:
                cost, ends = cheapest(end)
                options.append((rows * (end - start) + fixed + cost, (end, *ends)))
        return min(options)

    ends = cheapest(0)[1]
    return list(zip((0, *ends[:-1]), ends))


def completion_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``targets`` under ``logits`` at ``temperature`` (and the entropies of those distributions)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, entropy


def shared_prompt_logprobs(
    model: torch.nn.Module,
    cache_name: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    prompt_width: int,
    k: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    pass_cost: float = PASS_COST,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[N, L]`` of the completion tokens of N rows in groups of K identical prompts (and their
    entropies), each prompt computed once and the completions in :func:`completion_passes`; 0 after a row's end.

    ``cache_name`` is the model's KV-cache keyword (``cache`` or ``past_key_values``); ``pass_cost=math.inf``
    makes one pass over every completion column (the baseline of ``benchmarks/training_forward.py``)."""
    n, total = input_ids.shape
    width = total - prompt_width
    head = slice(None, prompt_width)
    prompt = model(
        input_ids=input_ids[::k, head],
        attention_mask=attention_mask[::k, head],
        position_ids=position_ids[::k, head],
        use_cache=True,
        logits_to_keep=1,  # the prompt's last position predicts the first completion token
    )
    targets = input_ids[:, prompt_width:]
    first = prompt.logits.repeat_interleave(k, dim=0)
    first_logp, first_entropy = completion_logprobs(first, targets[:, :1], temperature, with_entropy)
    logps, entropies = [first_logp], [first_entropy]

    cache = getattr(prompt, cache_name)
    cache.batch_repeat_interleave(k)
    # tail column j (input column prompt_width + j) predicts completion token j + 1: a row of length ℓ needs ℓ − 1
    columns = torch.arange(1, width + 1, device=attention_mask.device)
    tail_need = ((attention_mask[:, prompt_width:] != 0) * columns).amax(dim=1) - 1
    passes = completion_passes(tail_need.tolist(), width - 1, pass_cost)
    order = torch.arange(n, device=input_ids.device)
    if len(passes) > 1 and hasattr(cache, "batch_select_indices"):
        order = torch.argsort(tail_need, descending=True, stable=True)
        cache.batch_select_indices(order)
    elif passes:
        passes = [(0, passes[-1][1])]  # one pass: no rows to drop
    sorted_need = tail_need[order]
    kept = n
    for start, end in passes:
        rows = int((sorted_need > start).sum()) if len(passes) > 1 else n
        if rows < kept:
            cache.batch_select_indices(torch.arange(rows, device=order.device))
            kept = rows
        ids = order[:rows]
        span = slice(prompt_width + start, prompt_width + end)
        out = model(
            input_ids=input_ids[ids, span],
            attention_mask=attention_mask[ids, : prompt_width + end],
            position_ids=position_ids[ids, span],
            use_cache=True,
            **{cache_name: cache},
        )
        logp, entropy = completion_logprobs(out.logits, targets[ids, start + 1 : end + 1], temperature, with_entropy)
        logps.append(_pad_rows(logp, n))
        if with_entropy:
            entropies.append(_pad_rows(entropy, n))
    covered = 1 + (passes[-1][1] if passes else 0)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=order.device)
    ended = columns.unsqueeze(0) > tail_need.unsqueeze(1) + 1  # past each row's last real token
    logp = _unsort(logps, inverse, width - covered).masked_fill(ended, 0.0)
    entropy = _unsort(entropies, inverse, width - covered).masked_fill(ended, 0.0) if with_entropy else None
    return logp, entropy


def _pad_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """The running rows' values, zeros below for the rows that ended (rows sorted by length)."""
    return torch.cat([x, x.new_zeros(n - x.shape[0], x.shape[1])]) if x.shape[0] < n else x


def _unsort(pieces: list[torch.Tensor], inverse: torch.Tensor, missing: int) -> torch.Tensor:
    """``[N, L]``: the first column (rows in batch order), then the passes' columns (rows sorted) put back in batch
    order, then zeros for columns past every row's end."""
    first, rest = pieces[0], pieces[1:]
    parts = [first]
    if rest:
        parts.append(torch.cat(rest, dim=1)[inverse])
    if missing > 0:
        parts.append(first.new_zeros(first.shape[0], missing))
    return torch.cat(parts, dim=1)
