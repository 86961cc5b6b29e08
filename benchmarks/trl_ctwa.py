"""Does morl's CTWA matter inside TRL? TRL's GRPOTrainer on TinyMath with equal ``reward_weights`` against the same
trainer with morl's tuned CTWA (``morl.integrations.trl.MorlGRPOTrainer``), evaluated on held-out problems.

The job is the quickstart's (``cookbook/recipes/quickstart.yaml``): the shipped TinyMath model, TinyMath's three
rewards (morl's ``accuracy``, ``conciseness``, ``clarity``), 8 prompts × 8 completions per step, 64 new tokens,
temperature 1, lr 1e-4 AdamW with a constant schedule, clip ε = 0.2, no KL, one optimizer step per batch
(``loss_type="dapo"``: the token mean over the batch, morl's default), float32, 1 thread.

- ``equal``: TRL's ``GRPOTrainer`` as shipped, ``reward_weights=[1/3, 1/3, 1/3]``;
- ``ctwa``: ``MorlGRPOTrainer`` with the quickstart's CTWA (targets accuracy 0.45, conciseness 0.0, clarity 0.0,
  lr 0.5, u_max 1.0; λ0 ≈ 1/3 each) and morl's default diagnostics.

Each (method, seed) trains from the same initial model; greedy and sampled (temperature 1) accuracy, clarity and
mean length are measured on ``--eval-size`` held-out TinyMath problems with morl's ``Evaluator`` at step 0 and at
the end, and printed as a table (means over seeds last). Runs one after another in this process.

    python benchmarks/trl_ctwa.py --steps 100 --seeds 0 1 2 [--out trl_ctwa.json]   # ≈ 15 minutes on 1 CPU core
    python benchmarks/trl_ctwa.py --steps 2 --seeds 0 --eval-size 16                  # a smoke run

Needs TRL (``pip install "morl[trl]"``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_trl import NEW_TOKENS, quickstart_job

QUICKSTART_CTWA = {
    "name": "ctwa",
    "targets": {"accuracy": 0.45, "conciseness": 0.0, "clarity": 0.0},
    "lr": 0.5,
    "u_max": 1.0,
}
METHODS = ("equal", "ctwa")


def evaluate(model, examples: list[dict], seed: int, batch_size: int) -> dict[str, float]:
    """Greedy and sampled accuracy, clarity and mean length on ``examples`` (morl's Evaluator, as ``morl eval``)."""
    import torch
    from transformers import AutoTokenizer

    from morl.components import build
    from morl.evaluation import Evaluator
    from morl.policy import Policy
    from morl.rewards import Accuracy, Clarity
    from morl.tinymath import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())  # its own copy: Policy pads on the left
    policy = Policy(model, tokenizer)
    rollout = build("rollout", {"name": "transformers", "max_new_tokens": NEW_TOKENS, "temperature": 1.0})
    evaluator = Evaluator(rollout, [Accuracy(), Clarity()], batch_size=batch_size)
    torch.manual_seed(seed)  # the sampled evaluation's draws
    was_training = model.training
    try:
        return evaluator.evaluate(policy, examples, ["greedy", "sampled"])
    finally:
        model.train(was_training)


def train(method: str, seed: int, steps: int, output_dir: Path):
    """One run; returns the trained model and the trainer's log history."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import GRPOTrainer

    from morl.data import load_examples
    from morl.integrations.trl import MorlGRPOTrainer, trl_reward
    from morl.rewards import Accuracy, Clarity, Conciseness
    from morl.tinymath import default_model_path

    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = Dataset.from_list(load_examples("tinymath", "train", limit=2000))
    args = quickstart_job(
        output_dir=str(output_dir / f"{method}-seed{seed}"),
        reward_weights=[1 / 3, 1 / 3, 1 / 3] if method == "equal" else None,
        max_steps=steps,
        logging_steps=1,
        seed=seed,
    )
    rewards = [trl_reward(Accuracy()), trl_reward(Conciseness()), trl_reward(Clarity())]
    common = {"model": model, "reward_funcs": rewards, "args": args, "train_dataset": data}
    if method == "equal":
        trainer = GRPOTrainer(processing_class=tokenizer, **common)
    else:
        trainer = MorlGRPOTrainer(processing_class=tokenizer, controller=QUICKSTART_CTWA, **common)
    trainer.remove_callback(PrinterCallback)  # no log dict printed per step (disable_tqdm puts it there)
    trainer.train()
    return trainer.model, trainer.state.log_history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps (one generation batch each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--eval-size", type=int, default=200, help="held-out TinyMath problems")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write every result as JSON")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from morl.data import load_examples
    from morl.tinymath import default_model_path

    torch.set_num_threads(args.threads)
    examples = load_examples("tinymath", "eval", limit=args.eval_size)
    results = []
    with tempfile.TemporaryDirectory(prefix="morl-trl-ctwa-") as scratch:
        for seed in args.seeds:
            initial = AutoModelForCausalLM.from_pretrained(default_model_path(), dtype=torch.float32)
            before = evaluate(initial, examples, seed, args.eval_batch_size)
            for method in args.methods:
                start = time.perf_counter()
                model, history = train(method, seed, args.steps, Path(scratch))
                seconds = time.perf_counter() - start
                after = evaluate(model, examples, seed, args.eval_batch_size)
                weights = {k: v for k, v in history[-2].items() if k.startswith("weights/")} if len(history) > 1 else {}
                results.append(
                    {"method": method, "seed": seed, "steps": args.steps, "train_s": seconds, "before": before}
                    | {"after": after, "final_weights": weights}
                )
                print(f"{method} seed {seed}: {args.steps} steps in {seconds:.0f} s", flush=True)
    print_table(results)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")


COLUMNS = [
    ("greedy acc", "eval/greedy/accuracy"),
    ("sampled acc", "eval/sampled/accuracy"),
    ("greedy clarity", "eval/greedy/clarity"),
    ("greedy length", "eval/greedy/mean_length"),
]


def print_table(results: list[dict]) -> None:
    """One row per run and the mean over seeds per method: each metric at step 0 -> at the end."""
    header = f"{'method':<8} {'seed':>4}  " + "  ".join(f"{name:>17}" for name, _ in COLUMNS)
    print("\n" + header + "\n" + "-" * len(header))

    def cells(before: dict, after: dict) -> str:
        return "  ".join(f"{before[key]:>7.3f} -> {after[key]:<7.3f}" for _, key in COLUMNS)

    for r in results:
        print(f"{r['method']:<8} {r['seed']:>4}  {cells(r['before'], r['after'])}")
    for method in dict.fromkeys(r["method"] for r in results):
        runs = [r for r in results if r["method"] == method]
        mean_before = {key: statistics.fmean(r["before"][key] for r in runs) for _, key in COLUMNS}
        mean_after = {key: statistics.fmean(r["after"][key] for r in runs) for _, key in COLUMNS}
        print(f"{method:<8} {'mean':>4}  {cells(mean_before, mean_after)}")


if __name__ == "__main__":
    main()
