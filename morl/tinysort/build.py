"""Build the TinySort model: TinyMath's character tokenizer and tiny Llama, warm-started on TinySort's mixture.

The warm-start imitates :data:`~morl.tinysort.task.DEFAULT_MIXTURE`, so the starting policy samples every style
(RL has modes to move between) while greedy decoding writes the plain sorted list. The builder is TinyMath's
(:func:`morl.tinymath.build.build_warm_start`), so the build is bit-for-bit deterministic from its seed on a given
machine in the same way: one thread, deterministic kernels, seeded data.

Example:
    >>> import tempfile
    >>> path = build_tinysort(tempfile.mkdtemp(), steps=2, hidden=16, heads=2, progress=False)
    >>> sorted(p.name for p in path.iterdir())[:2]
    ['README.md', 'config.json']
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from morl.tinymath.build import build_warm_start, generate
from morl.tinysort.task import STYLES, classify_style, extract_list, make_sft_data

#: Longest completion: a 6-digit verbose answer is 34 characters, plus EOS.
MAX_NEW_TOKENS = 40


def build_tinysort(
    out_dir: str | Path,
    seed: int = 0,
    steps: int = 2000,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    progress: bool = True,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    mixture: dict[str, float] | None = None,
) -> Path:
    """Build, warm-start and save the TinySort model and tokenizer to ``out_dir``; returns the path.

    Loads back with ``AutoModelForCausalLM.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained``.
    Twice TinyMath's steps (about 3 minutes on one thread): after 1000, 15% of samples at temperature 1 were
    garbled lists in no style; after 2000, 6%.
    """
    call = (
        f"morl.tinysort.build_tinysort(out_dir, seed={seed}, steps={steps}, hidden={hidden}, layers={layers}, "
        f"heads={heads}, batch_size={batch_size}, lr={lr})"
    )
    return build_warm_start(
        out_dir,
        make_sft_data(steps * batch_size, seed, mixture),
        seed=seed,
        hidden=hidden,
        layers=layers,
        heads=heads,
        batch_size=batch_size,
        lr=lr,
        progress=progress,
        title="TinySort",
        call=call,
        max_new_tokens=MAX_NEW_TOKENS,
    )


def evaluate_styles(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[dict[str, str]],
    n_samples: int = 4,
    temperature: float = 1.0,
    *,
    seed: int = 0,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict[str, float]:
    """Greedy and sampled exact match (as the recipes score it: the last digit list, so ``verbose`` is right), mean
    sampled length (characters) and the share of each style in samples.

    Keys: ``greedy_exact_match``, ``sampled_exact_match``, ``sampled_mean_length``, ``style/<name>`` for every
    style in :data:`~morl.tinysort.task.STYLES` plus ``other`` (share of samples), and ``greedy_style/<name>``
    (share of greedy completions). Sampling is seeded and leaves the global RNG as it was.
    """
    prompts, answers = [p["prompt"] for p in problems], [p["answer"] for p in problems]
    greedy = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sampled = generate(
            model, tokenizer, prompts * n_samples, temperature=temperature, max_new_tokens=max_new_tokens
        )

    def exact(texts: list[str], truth: list[str]) -> float:
        return sum(extract_list(t) == a for t, a in zip(texts, truth, strict=True)) / max(1, len(texts))

    report = {
        "greedy_exact_match": exact(greedy, answers),
        "sampled_exact_match": exact(sampled, answers * n_samples),
        "sampled_mean_length": sum(map(len, sampled)) / max(1, len(sampled)),
    }
    for name, texts, asked in (("style", sampled, prompts * n_samples), ("greedy_style", greedy, prompts)):
        kinds = Counter(classify_style(t, p) for t, p in zip(texts, asked, strict=True))
        for style in [*STYLES, "other"]:
            report[f"{name}/{style}"] = kinds[style] / max(1, len(texts))
    return report
