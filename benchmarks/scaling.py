"""How a step's cost grows, morl against TRL's GRPOTrainer: seconds per step, tokens per second and peak memory
against completions per prompt K, the completion length limit and model size (CPU, 1 thread, at the sizes that fit).

Each point is ``benchmarks/vs_trl.py``'s job (8 prompts, the quickstart's loss, optimiser and rewards, equal fixed
weights) with one thing changed: K (the shipped TinyMath model, 64 new tokens), the completion length limit (a
randomly initialised model of TinyMath's architecture with a 1152-token context), or the model's width and depth
(random initialisation, K 8, 64 new tokens). In the length sweep the tokenizer's end-of-text token is one the model
cannot produce (an id past its vocabulary), so every completion runs to the limit; elsewhere a random model ends a
completion with probability about 1/vocabulary (99) per token: the tokens per step printed say how long they were.
Timings: one process alternating TRL's and morl's steps (``--steps`` measured after one warm-up); peak RSS: one more
process per library. The slope is the exponent b of time ∝ x^b between the first and the last point of a sweep.

Usage: ``python benchmarks/scaling.py [--steps 3]`` (TRL installed beside morl, as for ``vs_trl.py``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vs_trl

SIZES = {"tinymath-shape": (64, 2, 4), "width 256, 4 layers": (256, 4, 4), "width 512, 8 layers": (512, 8, 8)}


def random_model(folder: Path, hidden: int, layers: int, heads: int, context: int, endless: bool = False) -> str:
    """A randomly initialised model of TinyMath's architecture (its tokenizer) with another width, depth, context;
    ``endless``: the tokenizer's end-of-text token is a new one past the model's vocabulary, never sampled."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from morl.tinymath import default_model_path

    source = default_model_path()
    config = AutoConfig.from_pretrained(source)
    config.hidden_size, config.num_hidden_layers = hidden, layers
    config.num_attention_heads = config.num_key_value_heads = heads
    config.head_dim, config.intermediate_size, config.max_position_embeddings = hidden // heads, 4 * hidden, context
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    path = folder / f"h{hidden}-l{layers}-c{context}{'-endless' if endless else ''}"
    tokenizer = AutoTokenizer.from_pretrained(source)
    if endless:
        tokenizer.add_special_tokens({"eos_token": "<|never|>"})
        config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def point(steps: int, **job) -> dict[str, dict[str, float]]:
    options = vs_trl.job_options(**job)
    paired = vs_trl.run_worker("paired", steps + 1, options)
    out = {}
    for name in ("morl", "trl"):
        summary = vs_trl.summarize([paired[name]], warmup=1)
        summary["peak_rss_mb"] = vs_trl.run_worker(name, 2, options)[name]["peak_rss_mb"]
        out[name] = summary
    return out


def slope(xs: list[float], ys: list[float]) -> float:
    return math.log(ys[-1] / ys[0]) / math.log(xs[-1] / xs[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps per library and point")
    args = parser.parse_args()
    rows: list[tuple[str, str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sweeps = {
            "K": [(str(k), {"k": k}) for k in (4, 8, 16, 32)],
            "completion length": [
                (str(n), {"new_tokens": n, "model": random_model(folder, 64, 2, 4, 1152, endless=True)})
                for n in (64, 256, 1024)
            ],
            "model": [(name, {"model": random_model(folder, *shape, 256)}) for name, shape in SIZES.items()],
        }
        for sweep, points in sweeps.items():
            xs, times = [], {"morl": [], "trl": []}
            for label, job in points:
                result = point(args.steps, **job)
                rows.append((sweep, label, result))
                xs.append(float(label) if label.isdigit() else float(len(xs) + 1))
                for name in times:
                    times[name].append(result[name]["step_s"])
                print(
                    f"{sweep} {label}: "
                    + ", ".join(
                        f"{n} {r['step_s']:.2f} s/step {r['tokens_per_step']:.0f} tok/step "
                        f"{r['throughput_tok_s']:.0f} tok/s {r['peak_rss_mb']:.0f} MB"
                        for n, r in result.items()
                    ),
                    flush=True,
                )
            if sweep != "model":
                print(
                    f"  slope of step time against {sweep}: "
                    + ", ".join(f"{n} {slope(xs, t):.2f}" for n, t in times.items()),
                    flush=True,
                )
    print("\n| sweep | point | morl s/step | TRL s/step | TRL/morl | morl tok/s | TRL tok/s | morl MB | TRL MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for sweep, label, r in rows:
        m, t = r["morl"], r["trl"]
        print(
            f"| {sweep} | {label} | {m['step_s']:.2f} | {t['step_s']:.2f} | {t['step_s'] / m['step_s']:.2f} | "
            f"{m['throughput_tok_s']:.0f} | {t['throughput_tok_s']:.0f} | "
            f"{m['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
