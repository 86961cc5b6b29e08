"""morl's decoding loop against transformers' ``generate`` on the quickstart's rollouts: seconds per rollout and per
decoding step, paired in one process, and whether the completions are the same.

Each round samples the same 8 TinyMath prompts × K completions from the same seed with ``rollout.decoder:
generate`` and ``decoder: auto`` (the compact loop), in alternating order; then it times one decoding step of the
model's own forward (one token for every row over a filled KV cache, as ``generate`` runs it) against
:meth:`morl.compact.CompactDecoder.step` on the same cache length, and the compact step's cost against the number
of rows it decodes (what teacher-forced rows riding on the decoding steps would pay per step).

    python benchmarks/decoding.py [--rounds 10] [--k 8] [--new-tokens 64] [--model DIR]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch
from transformers import DynamicCache

from morl.compact import CompactDecoder
from morl.evaluation import split_examples
from morl.policy import Policy
from morl.rollout import TransformersRollout
from morl.tinymath.task import make_split


def rollout_seconds(policy: Policy, decoder: str, prompts, columns, k: int, new_tokens: int, seed: int):
    rollout = TransformersRollout(decoder=decoder, max_new_tokens=new_tokens)
    torch.manual_seed(seed)
    start = time.perf_counter()
    batch = rollout.generate(policy, prompts, columns, k)
    return time.perf_counter() - start, batch, rollout.decoder_used


def step_seconds(policy: Policy, rows: int, width: int, repeats: int = 50) -> tuple[float, float]:
    """Median seconds of one decoding step: the model's own forward on one token per row over a cache of ``width``
    positions, and the compact decoder's step at the same position."""
    model = policy.model
    ids = torch.randint(3, len(policy.tokenizer), (rows, width))
    mask = torch.ones_like(ids)
    token = ids[:, -1]
    own, compact = [], []
    with torch.no_grad():
        decoder = CompactDecoder(model)
        decoder.prefill(ids, mask, 1, repeats + 1)
        cache = DynamicCache(config=model.config)
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **{name: cache})
        for t in range(repeats):
            length = width + t + 1
            start = time.perf_counter()
            model(
                input_ids=token[:, None],
                attention_mask=torch.ones(rows, length, dtype=torch.long),
                position_ids=torch.full((rows, 1), length - 1),
                **{name: cache},
                use_cache=True,
                logits_to_keep=1,
            )
            own.append(time.perf_counter() - start)
            start = time.perf_counter()
            decoder.step(token, t)
            compact.append(time.perf_counter() - start)
    return statistics.median(own), statistics.median(compact)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--model", default="tinymath", help="a model directory with its tokenizer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = Policy.from_pretrained(args.model)
    times: dict[str, list[float]] = {"generate": [], "auto": []}
    same = 0
    for r in range(args.rounds + 1):  # round 0 warms up (and runs the compact decoder's first-use check)
        prompts, columns = split_examples(make_split("train", 8, r))
        order = ("generate", "auto") if r % 2 == 0 else ("auto", "generate")
        results = {d: rollout_seconds(policy, d, prompts, columns, args.k, args.new_tokens, r) for d in order}
        if results["auto"][2] != "compact":
            raise SystemExit("the compact decoder did not run on this model")
        if r:
            for d in order:
                times[d].append(results[d][0])
            same += torch.equal(results["generate"][1].input_ids, results["auto"][1].input_ids)
    generate, compact = (statistics.median(times[d]) for d in ("generate", "auto"))
    paired = statistics.median(a / g for a, g in zip(times["auto"], times["generate"]))
    job = f"8 prompts x {args.k} completions, {args.new_tokens} new tokens, 1 thread, {args.rounds} rounds"
    print(f"{args.model}: {job}")
    print(f"rollout seconds (median): generate {generate:.4f}, compact {compact:.4f}, ratio {compact / generate:.3f}")
    print(f"paired: median of (compact / generate) per round = {paired:.3f}, i.e. {1 / paired:.2f}x faster")
    print(f"identical completions from the same seed: {same} of {args.rounds} rounds")
    own, step = step_seconds(policy, 8 * args.k, 48)
    print(
        f"one decoding step ({8 * args.k} rows, cache of ~48-98 positions): model's own forward {own * 1e3:.2f} ms, "
        f"compact step {step * 1e3:.2f} ms ({own / step:.2f}x)"
    )
    by_rows = {rows: step_seconds(policy, rows, 48)[1] for rows in (16, 32, 64, 128)}
    print("compact step by rows: " + ", ".join(f"{rows} rows {t * 1e3:.2f} ms" for rows, t in by_rows.items()))


if __name__ == "__main__":
    main()
