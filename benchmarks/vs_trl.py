"""morl against TRL's GRPOTrainer on the same job: seconds per step, generated tokens per second, peak memory.

The job (the quickstart's): the shipped TinyMath model, TinyMath train prompts, 8 prompts × K = 8 completions,
64 new tokens, temperature 1 (no top-p/top-k), lr 1e-4 AdamW with a constant schedule, gradient clipping 1.0,
one optimiser step per batch (1 iteration, no mini-batches, no gradient accumulation), clip ε = 0.2, no KL and no
reference model, float32, no gradient checkpointing, 1 thread, and the three rewards (morl's accuracy,
conciseness and clarity callables) with equal static weights 1/3 — TRL's ``reward_weights`` and morl's ``fixed``
controller. Loss: the token mean over the whole batch (morl), which is TRL's ``loss_type="dapo"`` (active tokens
of the global accumulated batch; ``bnpo`` is the same with one process and no accumulation). morl runs as
shipped, its always-on diagnostics included.

Timings: each repetition is a fresh process that runs TRL's trainer and, after each TRL step (outside its timing),
one step of morl and one of morl sampling with transformers' ``generate`` (``generate``: ``rollout.decoder:
generate``, the code before morl's compact decoding loop), so a loaded machine slows all of them alike. Peak
RSS: one more process per library, alone. It also reports each library's rollout
against its limit: generated tokens per second divided by the tokens per second of one teacher-forced forward pass
of the same model over the same sequences.

TRL is not a dependency of morl; install it beside it in a separate environment (or ``make bench-trl``):

    python -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 -e ".[bench]"
    .venv-bench/bin/python benchmarks/vs_trl.py [--reps 3] [--steps 10] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPTS, K, NEW_TOKENS, LR, SEED = 8, 8, 64, 1e-4, 0
MODEL: str | None = None  # a model directory (with its tokenizer) instead of the shipped TinyMath model
DEVICE, DTYPE, LORA = "cpu", "float32", 0  # LORA: the adapters' rank on both sides (0: full fine-tuning)
ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # LoRA, both sides


# random-init models built here (nothing to download): Qwen2.5-0.5B's architecture, and a narrow one with its vocabulary
ARCHITECTURES = {
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "heads": (14, 2)},
    "qwen2.5-vocab-tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "heads": (4, 2)},
}


def byte_level_characters() -> list[str]:
    """The 256 characters a byte-level BPE tokenizer writes bytes as (GPT-2's table), in byte order of the table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def build_architecture(name: str, folder: Path) -> str:
    """A randomly initialised Qwen2 model of this architecture (vocabulary 151,936, rope theta 1e6, tied
    embeddings) and a Qwen2 tokenizer whose vocabulary is the 256 bytes (no merges: prompts are one token per
    byte) then filler words up to the model's size, so any sampled id decodes; saved in ``folder``, its path. A
    random model ends a completion with probability ~1/151,936 per token, so completions run to the length limit."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    shape = dict(ARCHITECTURES[name])
    heads, kv_heads = shape.pop("heads")
    vocab_size = 151936
    vocab = {c: i for i, c in enumerate(byte_level_characters())}
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size - 3)})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], pad_token="<|pad|>", eos_token="<|endoftext|>", unk_token=None)
    config = Qwen2Config(
        vocab_size=vocab_size,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        use_sliding_window=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **shape,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(getattr(torch, DTYPE))
    path = folder / name
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def synchronize() -> None:
    """Wait for the GPU's queued work, so a timer around it times the work (a no-op on the CPU)."""
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by torch on a GPU, else the process's peak RSS, in MB."""
    import torch

    if DEVICE.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def teacher_forced_seconds(model, input_ids, attention_mask, repeats: int = 5) -> float:
    """Median seconds of one no-grad forward pass over whole sequences (what decoding would cost per token if
    per-step overhead vanished)."""
    import torch

    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.cumsum(1) - 1).clamp_min(0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def padded(prompts: list[list[int]], completions: list[list[int]], pad: int):
    """Left-padded prompts + right-padded completions, as one [N, T] batch and its attention mask."""
    import torch

    width, length = max(map(len, prompts)), max(map(len, completions))
    rows, masks = [], []
    for p, c in zip(prompts, completions):
        rows.append([pad] * (width - len(p)) + p + c + [pad] * (length - len(c)))
        masks.append([0] * (width - len(p)) + [1] * (len(p) + len(c)) + [0] * (length - len(c)))
    return torch.tensor(rows), torch.tensor(masks)


class MorlRun:
    """morl's quickstart pipeline with fixed equal weights, stepped on demand; ``decoder``: the rollout's
    ``decoder`` setting (``generate``: transformers' ``model.generate``, as before morl's compact decoding loop)."""

    def __init__(self, decoder: str = "auto") -> None:
        from morl.pipeline import Pipeline
        from morl.policy import Policy
        from morl.recipe import build_components, load_data, load_recipe

        overrides = ["train.progress=false", f"train.group_size={K}", f"rollout.max_new_tokens={NEW_TOKENS}"]
        overrides.append(f"rollout.decoder={decoder}")
        recipe = load_recipe(ROOT / "cookbook/recipes/quickstart_linear.yaml", overrides)
        self.train, _ = load_data(recipe)
        lora = {"r": LORA, "alpha": 2 * LORA, "target_modules": TARGETS} if LORA else None
        policy = Policy.from_pretrained(MODEL or "tinymath", dtype=DTYPE, device=DEVICE, lora=lora)
        self.pipe = Pipeline(policy=policy, config=recipe.train, **build_components(recipe))
        self.record: dict = {"step_s": [], "rollout_s": [], "tokens": []}
        generate = self.pipe.rollout.generate

        def timed_generate(*args, **kwargs):
            start = time.perf_counter()
            batch = generate(*args, **kwargs)
            synchronize()
            self.record["rollout_s"].append(time.perf_counter() - start)
            return batch

        self.pipe.rollout.generate = timed_generate

    def step(self) -> None:
        start = time.perf_counter()
        record, _ = self.pipe.step(self.pipe.next_examples(self.train))
        self.batch = record.rollout
        synchronize()
        self.record["step_s"].append(time.perf_counter() - start)
        self.record["tokens"].append(int(self.batch.completion_mask.sum()))

    def finish(self) -> dict:
        self.record["forward_s"] = teacher_forced_seconds(
            self.pipe.policy.model, self.batch.input_ids, self.batch.attention_mask
        )
        return self.record


def quickstart_job(**settings):
    """TRL's ``GRPOConfig`` for the quickstart's job (the module docstring lists it), on the CPU, no logging or
    saving; ``settings`` add or replace fields (the output folder, steps, seed, reward weights)."""
    from trl import GRPOConfig

    job = {
        "per_device_train_batch_size": PROMPTS * K,
        "gradient_accumulation_steps": 1,
        "num_generations": K,
        "max_completion_length": NEW_TOKENS,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "learning_rate": LR,
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch",
        "beta": 0.0,
        "epsilon": 0.2,
        "num_iterations": 1,
        "loss_type": "dapo",
        "scale_rewards": "group",
        "gradient_checkpointing": False,
        "bf16": DTYPE == "bfloat16",
        "use_cpu": DEVICE == "cpu",
        "report_to": [],
        "save_strategy": "no",
        "disable_tqdm": True,
    }
    return GRPOConfig(**{**job, **settings})


def trl_trainer(steps: int, after_step=None):
    """TRL's GRPOTrainer on the same job, and the record its steps fill; ``after_step()`` runs after each TRL step,
    outside its timing (to interleave morl's steps)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from morl.data import load_examples
    from morl.rewards import Accuracy, Clarity, Conciseness
    from morl.tinymath import default_model_path

    path = MODEL or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, DTYPE)).to(DEVICE)
    peft_config = None
    if LORA:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA, lora_alpha=2 * LORA, lora_dropout=0.0, target_modules=TARGETS)
    accuracy_fn, conciseness_fn, clarity_fn = Accuracy(), Conciseness(), Clarity()

    def accuracy(prompts, completions, **kwargs):
        return accuracy_fn(prompts, completions, **kwargs)

    def conciseness(prompts, completions, completion_ids, **kwargs):
        return conciseness_fn(prompts, completions, completion_lengths=[len(ids) for ids in completion_ids])

    def clarity(prompts, completions, **kwargs):
        return clarity_fn(prompts, completions)

    args = quickstart_job(
        output_dir="/tmp/morl-vs-trl",
        reward_weights=[1 / 3, 1 / 3, 1 / 3],
        max_steps=steps,
        seed=SEED,
    )
    record: dict = {"step_s": [], "rollout_s": [], "tokens": []}
    mark: list[float] = []

    class Clock(TrainerCallback):
        """A TRL step: from the end of the previous one (or the first step's start) to its end, so the trainer's
        work between steps (data, logging) counts; what ``after_step`` does is left out."""

        def on_step_begin(self, args, state, control, **kwargs):
            if not mark:
                mark.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            record["step_s"].append(time.perf_counter() - mark[-1])
            if after_step is not None:
                after_step()
            mark.append(time.perf_counter())

    data = Dataset.from_list(load_examples("tinymath", "train", limit=2000))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[accuracy, conciseness, clarity],
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[Clock()],
        peft_config=peft_config,
    )
    last: dict = {}
    generate = trainer._generate_single_turn

    def timed_generate(prompt_ids, *rest, **kwargs):
        start = time.perf_counter()
        completion_ids, logprobs = generate(prompt_ids, *rest, **kwargs)
        synchronize()
        record["rollout_s"].append(time.perf_counter() - start)
        record["tokens"].append(sum(map(len, completion_ids)))
        last.update(prompts=[list(p) for p in prompt_ids], completions=completion_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = timed_generate

    def finish() -> dict:
        input_ids, attention_mask = padded(last["prompts"], last["completions"], tokenizer.pad_token_id)
        record["forward_s"] = teacher_forced_seconds(trainer.model, input_ids, attention_mask)
        return record

    return trainer, finish


def worker(mode: str, steps: int) -> None:
    """``paired``: TRL and morl (and morl sampling with ``generate``) in one process, one step each in turn, for
    timings; ``trl``, ``morl``, ``morl-generate``: one library alone, for its peak memory."""
    import torch

    torch.set_num_threads(1)
    result: dict = {}
    if mode == "paired":
        runs = {"morl": MorlRun(), "morl-generate": MorlRun(decoder="generate")}
        turn = [0]

        def morl_steps() -> None:
            order = list(runs) if turn[0] % 2 == 0 else list(reversed(runs))
            for name in order:
                runs[name].step()
            turn[0] += 1

        trainer, finish = trl_trainer(steps, after_step=morl_steps)
        trainer.train()
        result = {"trl": finish(), **{name: run.finish() for name, run in runs.items()}}
    elif mode == "trl":
        trainer, finish = trl_trainer(steps)
        trainer.train()
        result = {"trl": finish()}
    else:
        run = MorlRun(decoder="auto" if mode == "morl" else "generate")
        for _ in range(steps):
            run.step()
        result = {mode: run.finish()}
    for record in result.values():
        record["peak_rss_mb"] = peak_memory_mb()
    print("RESULT " + json.dumps(result))


def summarize(runs: list[dict], warmup: int) -> dict[str, float]:
    """Medians over every measured step of every repetition."""
    med = statistics.median
    steps = [s for r in runs for s in r["step_s"][warmup:]]
    rollouts = [s for r in runs for s in r["rollout_s"][warmup:]]
    tokens = [t for r in runs for t in r["tokens"][warmup:]]
    rollout_rate = med(t / s for r in runs for t, s in zip(r["tokens"][warmup:], r["rollout_s"][warmup:]))
    forward_rate = med(r["tokens"][-1] / r["forward_s"] for r in runs)
    return {
        "step_s": med(steps),
        "tokens_per_step": med(tokens),
        "throughput_tok_s": med(t / s for r in runs for t, s in zip(r["tokens"][warmup:], r["step_s"][warmup:])),
        "rollout_s": med(rollouts),
        "rollout_tok_s": rollout_rate,
        "forward_tok_s": forward_rate,
        "rollout_vs_forward": rollout_rate / forward_rate,
    }


def job_options(k: int | None = None, new_tokens: int | None = None, model: str | None = None) -> list[str]:
    """The worker options of a job (default: this process's)."""
    options = ["--k", str(k or K), "--new-tokens", str(new_tokens or NEW_TOKENS)]
    options += ["--device", DEVICE, "--dtype", DTYPE, "--lora", str(LORA)]
    model = model or MODEL
    return options + (["--model", model] if model else [])


def run_worker(mode: str, steps: int, job: list[str] | None = None) -> dict:
    """One worker process; ``job``: the options that change the job (``--k``, ``--new-tokens``, ``--model``)."""
    command = [sys.executable, __file__, "--worker", mode, "--steps", str(steps), *(job or [])]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{mode} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    global K, NEW_TOKENS, MODEL, DEVICE, DTYPE, LORA
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="fresh processes, each running both libraries in turn")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per library and process")
    parser.add_argument("--warmup", type=int, default=2, help="steps per process left out of the figures")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=K, help="completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="completion length limit")
    parser.add_argument("--model", help="a model directory with its tokenizer (default: the shipped TinyMath model)")
    parser.add_argument("--device", default=DEVICE, help="cpu or cuda (both libraries)")
    parser.add_argument("--dtype", default=DTYPE, choices=["float32", "bfloat16"], help="weights' dtype, both sides")
    parser.add_argument("--lora", type=int, default=LORA, help="LoRA rank on both sides (0: full fine-tuning)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), help="build a random-init model of this architecture")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps of each one-library peak-memory process")
    args = parser.parse_args()
    K, NEW_TOKENS, MODEL = args.k, args.new_tokens, args.model
    DEVICE, DTYPE, LORA = args.device, args.dtype, args.lora
    if args.worker:
        worker(args.worker, args.steps)
        return
    if args.arch:
        import tempfile

        built = tempfile.TemporaryDirectory()
        MODEL = build_architecture(args.arch, Path(built.name))

    libraries = ("morl", "trl", "morl-generate")
    runs: dict[str, list[dict]] = {name: [] for name in libraries}
    for rep in range(args.reps):
        result = run_worker("paired", args.steps + args.warmup, job_options())
        for name in libraries:
            runs[name].append(result[name])
        steps = {name: statistics.median(result[name]["step_s"][args.warmup :]) for name in libraries}
        print(f"rep {rep}: median seconds per step " + ", ".join(f"{k} {v:.3f}" for k, v in steps.items()), flush=True)
    peak = {
        name: run_worker(name, args.warmup + args.memory_steps, job_options())[name]["peak_rss_mb"]
        for name in libraries
    }
    summary = {name: summarize(runs[name], args.warmup) | {"peak_rss_mb": peak[name]} for name in libraries}
    morl, trl, before = (summary[name] for name in libraries)
    memory = "GPU memory" if DEVICE.startswith("cuda") else "RSS"
    print(
        f"\n{PROMPTS} prompts x {K} completions, {NEW_TOKENS} new tokens, 1 thread, {DEVICE}, {DTYPE}"
        f"{f', LoRA r {LORA}' if LORA else ''}{f', {args.arch}' if args.arch else ''}; {args.reps} processes, each "
        f"alternating TRL and morl steps ({args.steps} measured after {args.warmup} warm-up); medians; peak "
        f"{memory} from a separate process per library"
    )
    print(f"{'':<34}{'morl':>10}{'trl':>10}{'morl/trl':>10}{'generate':>10}")
    rows = [
        ("seconds per step", "step_s", "{:.3f}"),
        ("generated tokens per step", "tokens_per_step", "{:.0f}"),
        ("tokens per second (whole step)", "throughput_tok_s", "{:.0f}"),
        ("rollout seconds", "rollout_s", "{:.3f}"),
        ("rollout tokens per second", "rollout_tok_s", "{:.0f}"),
        ("teacher-forced forward tok/s", "forward_tok_s", "{:.0f}"),
        ("rollout / forward tok/s", "rollout_vs_forward", "{:.3f}"),
        (f"peak {memory} (MB)", "peak_rss_mb", "{:.0f}"),
    ]
    for label, key, fmt in rows:
        ratio = morl[key] / trl[key]
        print(
            f"{label:<34}{fmt.format(morl[key]):>10}{fmt.format(trl[key]):>10}{ratio:>10.2f}{fmt.format(before[key]):>10}"
        )
    paired = statistics.median(
        m / t
        for a, b in zip(runs["morl"], runs["trl"])
        for m, t in zip(a["step_s"][args.warmup :], b["step_s"][args.warmup :])
    )
    speedup = morl["throughput_tok_s"] / trl["throughput_tok_s"]
    print(f"\nmorl throughput = {speedup:.2f}x TRL's (generated tokens per second over the whole step)")
    print(f"paired step by step: median of (morl step / TRL step) = {paired:.3f}, i.e. {1 / paired:.2f}x")
    print(
        f"generate = morl sampling with transformers' generate (the code before its compact decoding loop): "
        f"{before['throughput_tok_s'] / trl['throughput_tok_s']:.2f}x TRL's throughput"
    )


if __name__ == "__main__":
    main()
