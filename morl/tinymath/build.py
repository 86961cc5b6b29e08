"""Build the TinyMath model: a character tokenizer, a tiny Llama, and a supervised warm-start.

The warm-start imitates :data:`~morl.tinymath.task.DEFAULT_MIXTURE`, so the starting policy samples every style
(RL has modes to move between) while greedy decoding follows the accurate step-by-step style. The build is
bit-for-bit deterministic from its seed on a given machine: one thread, deterministic kernels, seeded data.

Example:
    >>> import tempfile
    >>> path = build_tinymath(tempfile.mkdtemp(), steps=2, hidden=16, heads=2, progress=False)
    >>> sorted(p.name for p in path.iterdir())[:2]
    ['README.md', 'config.json']
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from morl.tinymath.task import STYLES, classify_style, extract_boxed, make_sft_data
from morl.tinymath.tokenizer import build_tokenizer, save_tokenizer

MAX_NEW_TOKENS = 64


def tinymath_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4) -> LlamaConfig:
    """A Llama config (not Qwen2: its folder would make ``AutoTokenizer`` load a byte-level tokenizer)."""
    if hidden % heads:
        raise ValueError(f"hidden must be divisible by heads. Found hidden={hidden}, heads={heads}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )


def _sft_batch(tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + completion + EOS`` with labels on the completion and EOS only."""
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
    completions = tokenizer([r["completion"] for r in rows], add_special_tokens=False)["input_ids"]
    seqs = [p + c + [tokenizer.eos_token_id] for p, c in zip(prompts, completions, strict=True)]
    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, seq) in enumerate(zip(prompts, seqs, strict=True)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(seq[len(p) :])
        mask[i, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def build_tinymath(
    out_dir: str | Path,
    seed: int = 0,
    steps: int = 1000,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    progress: bool = True,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    mixture: dict[str, float] | None = None,
) -> Path:
    """Build, warm-start and save the TinyMath model and tokenizer to ``out_dir``; returns the path.

    Loads back with ``AutoModelForCausalLM.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained``.
    """
    call = (
        f"morl.tinymath.build_tinymath(out_dir, seed={seed}, steps={steps}, hidden={hidden}, layers={layers}, "
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
        title="TinyMath",
        call=call,
        max_new_tokens=MAX_NEW_TOKENS,
    )


def build_warm_start(
    out_dir: str | Path,
    data: list[dict[str, str]],
    *,
    seed: int,
    hidden: int,
    layers: int,
    heads: int,
    batch_size: int,
    lr: float,
    progress: bool,
    title: str,
    call: str,
    max_new_tokens: int,
) -> Path:
    """A character-level Llama trained on ``data`` (``prompt``/``completion`` rows, ``batch_size`` per step).

    Shared by the embedded tasks (TinyMath, TinySort) so each build is deterministic the same way: one thread,
    deterministic kernels, the model's initialisation seeded from ``seed``. ``title`` and ``call`` (the Python
    call that rebuilds it) go into the folder's README.md; ``max_new_tokens`` into its generation config.
    """
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # reductions split across threads would change the bits
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(tinymath_config(len(tokenizer), hidden, layers, heads))
            _train(model, tokenizer, data, batch_size, lr, progress, label=f"{title} SFT")
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,  # RL samples; top_k=0 keeps sampling on the full softmax the log-probs are taken from
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "README.md").write_text(
        f"# {title} ({n_params:,} parameters)\n\nCharacter-level Llama warm-started on {title} by `{call}`.\n"
    )
    return out


def _train(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    data: list[dict[str, str]],
    batch_size: int,
    lr: float,
    progress: bool,
    label: str = "TinyMath SFT",
) -> None:
    """AdamW with linear warm-up and cosine decay to a tenth of ``lr``; loss on completion tokens only."""
    steps = len(data) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"))
    with Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress) as bar:
        task = bar.add_task("sft", total=steps, loss="-")
        for step in range(steps):
            batch = _sft_batch(tokenizer, data[step * batch_size : (step + 1) * batch_size])
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(task, advance=1, loss=f"{loss.item():.3f}")
    model.eval()


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    temperature: float = 0.0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 256,
    num_threads: int | None = 1,
) -> list[str]:
    """Completions for ``prompts``: greedy when ``temperature`` is 0, else plain sampling (no top-k/top-p).

    Runs on ``num_threads`` threads (restored after; ``None`` leaves the setting alone): a tiny model is
    dominated by per-call overhead, and on a busy 2-core machine two threads made generation ~5x slower.
    """
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        texts: list[str] = []
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            sampling: dict[str, Any] = {"do_sample": False}
            if temperature > 0:
                sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return texts
    finally:
        tokenizer.padding_side = side
        torch.set_num_threads(threads)


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
    """Greedy and sampled accuracy, mean sampled length (characters) and the share of each style in samples.

    Keys: ``greedy_accuracy``, ``sampled_accuracy``, ``sampled_mean_length``, and for every style in
    :data:`~morl.tinymath.task.STYLES` plus ``other``: ``style/<name>`` (share of samples) and ``accuracy/<name>``
    (accuracy of those samples, NaN if none). Sampling is seeded and leaves the global RNG as it was.
    """
    prompts, answers = [p["prompt"] for p in problems], [p["answer"] for p in problems]
    greedy = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sampled = generate(
            model, tokenizer, prompts * n_samples, temperature=temperature, max_new_tokens=max_new_tokens
        )

    def accuracy(texts: Sequence[str], truth: Sequence[str]) -> float:
        return sum(extract_boxed(t) == a for t, a in zip(texts, truth, strict=True)) / max(1, len(texts))

    kinds = [classify_style(t) for t in sampled]
    styles = Counter(kinds)
    report = {
        "greedy_accuracy": accuracy(greedy, answers),
        "sampled_accuracy": accuracy(sampled, answers * n_samples),
        "sampled_mean_length": sum(map(len, sampled)) / max(1, len(sampled)),
    }
    for style in [*STYLES, "other"]:
        report[f"style/{style}"] = styles[style] / max(1, len(sampled))
        mine = [(t, a) for t, a, k in zip(sampled, answers * n_samples, kinds, strict=True) if k == style]
        report[f"accuracy/{style}"] = accuracy(*zip(*mine, strict=True)) if mine else math.nan
    return report
