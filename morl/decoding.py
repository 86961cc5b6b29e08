"""morl's decoding loop over :class:`morl.compact.CompactDecoder`: what ``model.generate`` does for sampling, with the
same random draws.

Each step samples exactly as transformers' ``_sample`` does — the same logits warpers (transformers' own classes:
temperature, then top-k, then top-p), ``softmax`` then one ``torch.multinomial`` over all rows, finished rows padded,
a stop when every row has ended or at ``max_new_tokens`` — so with the same seed it draws the same tokens and leaves
torch's generator where ``generate`` would. It keeps only the sampled tokens' log-probabilities, never a step's
whole logits.

Unlike ``generate``, rows that have ended leave the batch: once a quarter of the rows still decoded have
finished, the cache keeps only the others, so the steps after cost what the unfinished rows cost. The random draw
still covers every row (finished rows draw from a placeholder distribution and are padded, as in ``generate``):
``torch.multinomial`` consumes the generator by the shape of its input, not its values, so the draws of the
unfinished rows are unchanged.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from morl.compact import CompactDecoder


def warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """transformers' sampling warpers for these settings, in ``generate``'s order."""
    chain = LogitsProcessorList()
    if temperature != 1.0:
        chain.append(TemperatureLogitsWarper(temperature))
    if top_k:
        chain.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p=top_p))
    return chain


@torch.no_grad()
def sample(
    decoder: CompactDecoder,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    k: int,
    max_new_tokens: int,
    *,
    eos_token_ids: list[int],
    pad_token_id: int,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``k`` completions of each left-padded prompt (``[P, W]``), as ``[P·k, L]`` token ids (pad after each row's
    first EOS) and, with ``logprobs``, each sampled token's ``log softmax(logits / temperature)`` (``[P·k, L]``)."""
    logits = decoder.prefill(prompt_ids, prompt_mask, k, max_new_tokens).repeat_interleave(k, 0)
    rows = logits.shape[0]
    chain = LogitsProcessorList() if greedy else warpers(temperature, top_k, top_p)
    eos = torch.tensor(eos_token_ids, device=logits.device)
    unfinished = torch.ones(rows, dtype=torch.long, device=logits.device)
    decoded = torch.arange(rows, device=logits.device)  # the rows in the decoder's cache, in its order
    tokens, chosen_logprobs = [], []
    empty = torch.empty(rows, 0, dtype=torch.long, device=logits.device)
    for t in range(max_new_tokens):
        if t:
            ended = unfinished[decoded] == 0
            if int(ended.sum()) * 4 >= decoded.numel():  # a quarter of the decoded rows have ended: drop them
                kept = (~ended).nonzero().squeeze(1)
                decoder.keep(kept)
                decoded = decoded[kept]
            step_logits = decoder.step(tokens[-1][decoded], t - 1)
            if decoded.numel() == rows:
                logits = step_logits
            else:  # finished rows: a placeholder distribution (uniform), drawn from and then padded
                logits = torch.zeros(rows, step_logits.shape[1], dtype=step_logits.dtype, device=logits.device)
                logits[decoded] = step_logits
        if greedy:
            next_tokens = logits.argmax(-1)
        else:
            next_tokens = torch.multinomial(torch.softmax(chain(empty, logits), dim=-1), num_samples=1).squeeze(1)
        next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
        if logprobs:
            scaled = logits / temperature if temperature != 1.0 else logits
            chosen_logprobs.append(torch.log_softmax(scaled, -1).gather(-1, next_tokens[:, None])[:, 0])
        tokens.append(next_tokens)
        unfinished = unfinished & ~torch.isin(next_tokens, eos)
        if not unfinished.any():
            break
    completion = torch.stack(tokens, dim=1)
    return completion, (torch.stack(chosen_logprobs, dim=1) if logprobs else None)
