"""``morl``: fit, evaluate and score from the command line; recipes build the same objects as Python."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from morl.components import FAMILIES, RecipeError, registered
from morl.theory.cli import theory_app

app = typer.Typer(help="Multi-objective RL fine-tuning of language models.", no_args_is_help=True)
tinymath_app = typer.Typer(help="The embedded TinyMath task and model.", no_args_is_help=True)
app.add_typer(tinymath_app, name="tinymath")
app.add_typer(theory_app, name="theory", help="Check the covariance law numerically.")
console = Console()
err_console = Console(stderr=True)

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a recipe field: key.path=value")]


def _fail(message: str, code: int = 2) -> None:
    """Exit with a message: code 2 for a wrong recipe, dataset or checkpoint, 1 for a run that failed."""
    err_console.print(f"[red]error:[/] {escape(message)}")  # a message's [brackets] are text, not markup
    raise typer.Exit(code=code)


@app.command()
def fit(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML")],
    set_: SetOption = None,
    output_dir: Annotated[
        str | None, typer.Option(help="run directory (default: train.output_dir, else a fresh runs/<time>)")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="continue a run from its newest complete checkpoint: its directory, or 'latest' "
            "(train.output_dir if set, else the most recent run under runs/)"
        ),
    ] = None,
    accept_change: Annotated[
        list[str] | None,
        typer.Option(
            help="with --resume: accept this recipe difference from the run's (a path such as train.lr, or a whole "
            "section such as controller); repeatable. Accepted changes are recorded in the run's manifest"
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="discard the run already in the output directory (its metrics, checkpoints, model)")
    ] = False,
    launch: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="train data-parallel on N processes: runs this command under `accelerate launch --num_processes N` "
            "(one per GPU; gloo on the CPU when there is no GPU)",
        ),
    ] = None,
    accelerate_config: Annotated[
        Path | None,
        typer.Option(help="with --launch: an accelerate config file (cookbook/accelerate/ddp.yaml, fsdp.yaml, ...)"),
    ] = None,
) -> None:
    """Train with the recipe's components; writes a run directory (manifest, metrics, checkpoints, model).

    A run directory belongs to one run: a new fit into a folder that holds a run stops before the model loads, and
    says how to go on (--resume, another --output-dir, or --overwrite). A resume continues the same experiment or
    lists every difference (accept them with --accept-change).

    Data-parallel: ``morl fit RECIPE --launch N``, or ``accelerate launch [--config_file F] -m morl fit RECIPE``.
    """
    if launch is not None and launch > 1:
        from morl import distributed

        if not distributed.launched():  # the launcher starts N copies of this command, without --launch
            command = launch_command(
                launch, recipe, set_ or [], output_dir, resume, accelerate_config, accept_change or [], overwrite
            )
            raise typer.Exit(code=subprocess.run(command).returncode)
    from morl.checkpoint import CheckpointError, Interrupted, find_checkpoint, latest_run, read_checkpoint
    from morl.data import DataError
    from morl.pipeline import NonFiniteError
    from morl.recipe import build_components, load_data, load_recipe, pipeline_from_recipe
    from morl.rewards import RewardError
    from morl.run import ResumeMismatch, RunDirError, check_new_run, check_resume

    overrides = list(set_ or [])
    if output_dir:
        overrides.append(f"train.output_dir={output_dir}")
    checkpoint = None
    try:
        parsed = load_recipe(recipe, overrides)
        build_components(parsed)
        if resume is not None:  # before the data and the model: a wrong path or recipe fails fast
            if resume == "latest":
                out = parsed.train.output_dir
                run = Path(out) if out else latest_run("runs")
            else:
                run = Path(resume)
            checkpoint = find_checkpoint(run)
            saved = read_checkpoint(checkpoint).state.identity
            mine = parsed.model_dump(mode="json")
            check_resume({k: v for k, v in saved.items() if k in mine}, mine, accept_change or [])
        elif parsed.train.output_dir:
            check_new_run(Path(parsed.train.output_dir), overwrite=overwrite)
        train, evals = load_data(parsed)
    except (RecipeError, CheckpointError, RunDirError, ResumeMismatch, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    try:
        pipeline = pipeline_from_recipe(parsed)
    except OSError as err:
        _fail(f"cannot load policy.model={parsed.policy.model!r}: {err}")
    try:
        result = pipeline.fit(
            train, evals, resume_from=checkpoint, overwrite=overwrite, accept_changes=accept_change or []
        )
    except (DataError, RecipeError, CheckpointError, RunDirError, ResumeMismatch) as err:
        _fail(str(err))
    except (RewardError, NonFiniteError) as err:
        _fail(str(err), code=1)
    except Interrupted as stop:
        err_console.print(
            f"[yellow]{stop}[/]\nresume with: morl fit {recipe} --resume {stop.checkpoint.parent.parent}"
            if stop.checkpoint
            else f"[yellow]{stop}[/]"
        )
        raise typer.Exit(code=128 + stop.signum) from None
    from morl import distributed

    if distributed.is_main():
        console.print(f"run directory: [bold]{result.run_dir}[/]")


def launch_command(
    processes: int,
    recipe: Path,
    overrides: list[str],
    output_dir: str | None = None,
    resume: str | None = None,
    config_file: Path | None = None,
    accept_changes: list[str] | None = None,
    overwrite: bool = False,
) -> list[str]:
    """``accelerate launch`` running ``morl fit`` on ``processes`` processes of this machine.

    ``--multi_gpu`` selects torchrun's launcher, which also serves CPU-only machines: each process then trains
    on the CPU with gloo (the pipeline asks accelerate for the CPU when the policy is on it).
    """
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is not None:
        command += ["--config_file", str(config_file)]
    else:
        command += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--num_processes", str(processes), "--main_process_port", str(_free_port()), "-m", "morl", "fit"]
    command.append(str(recipe))
    for item in overrides:
        command += ["--set", item]
    if output_dir:
        command += ["--output-dir", output_dir]
    if resume:
        command += ["--resume", resume]
    for change in accept_changes or []:
        command += ["--accept-change", change]
    if overwrite:
        command.append("--overwrite")
    return command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@app.command()
def validate(recipe: Path, set_: SetOption = None) -> None:
    """Check a recipe (fields, components, objective names) without loading a model."""
    from morl.recipe import build_components, load_recipe

    try:
        parsed = load_recipe(recipe, list(set_ or []))
        components = build_components(parsed)
    except (RecipeError, ValueError) as err:
        _fail(str(err))
    console.print(f"[green]ok[/]: {recipe}")
    for key, value in components.items():
        console.print(f"  {key}: {value!r}")


@app.command("eval")
def eval_(
    recipe: Path,
    checkpoint: Annotated[Path, typer.Option(help="a run directory or a Hugging Face model directory")],
    set_: SetOption = None,
) -> None:
    """Score a checkpoint on the recipe's eval split (greedy and sampled)."""
    from morl.evaluation import Evaluator
    from morl.policy import Policy
    from morl.recipe import build_components, load_data, load_recipe
    from morl.rewards import PlacedOnDevice, RewardFn, objective_name
    from morl.state import TrainingState

    try:
        parsed = load_recipe(recipe, list(set_ or []))
        components = build_components(parsed)
        _, evals = load_data(parsed)
    except (RecipeError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    if not evals:
        _fail("the recipe has no eval data (data.eval)")
    model_dir = checkpoint / "model" if (checkpoint / "model").is_dir() else checkpoint
    options = parsed.policy.model_dump(exclude={"model"})
    policy = Policy.from_pretrained(str(model_dir), **options)
    rewards = components["rewards"]
    for reward in rewards:  # a reward model scores on the policy's device
        if isinstance(reward, PlacedOnDevice):
            reward.place(policy.device)
    state_file = checkpoint / "training_state.json"
    if state_file.exists():  # stateful rewards (the running mean of conciseness) as the run left them
        saved = TrainingState.from_json(json.loads(state_file.read_text())).parts
        for name, reward in zip([objective_name(r) for r in rewards], rewards):
            if isinstance(reward, RewardFn) and f"reward/{name}" in saved:
                reward.load_state_dict(saved[f"reward/{name}"]["state"])
    evaluator = Evaluator(components["rollout"], rewards, parsed.train.eval_batch_size, parsed.train.on_reward_error)
    modes = [m for m, on in (("greedy", parsed.train.eval_greedy), ("sampled", parsed.train.eval_sampled)) if on]
    scores = evaluator.evaluate(policy, evals, modes)
    table = Table(title=f"eval: {checkpoint}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in scores.items():
        table.add_row(key.removeprefix("eval/"), f"{value:.4f}")
    console.print(table)


@app.command()
def score(
    file: Annotated[Path, typer.Argument(help="JSONL with prompt, completion, answer and any columns")],
    rewards: Annotated[str, typer.Option(help="comma-separated reward names or import paths")] = (
        "accuracy,conciseness,clarity"
    ),
    out: Annotated[Path | None, typer.Option(help="write the rows with their rewards")] = None,
) -> None:
    """Score completions that already exist and print per-objective means."""
    from morl.components import build
    from morl.rewards import objective_name, score_rewards

    try:
        fns = [build("reward", name.strip()) for name in rewards.split(",") if name.strip()]
        rows = _read_jsonl(file)
    except (RecipeError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    for field in ("prompt", "completion"):
        missing = [i for i, row in enumerate(rows) if field not in row]
        if missing:
            _fail(f"{file}: row {missing[0]} has no {field!r} field (fields: {sorted(rows[missing[0]])})")
    columns = {k: [row.get(k) for row in rows] for k in rows[0] if k not in ("prompt", "completion")}
    matrix, _ = score_rewards(
        fns, [r["prompt"] for r in rows], [r["completion"] for r in rows], columns, training=False
    )
    names = [objective_name(f) for f in fns]
    table = Table(title=f"{file} ({len(rows)} completions)")
    table.add_column("objective")
    table.add_column("mean", justify="right")
    table.add_column("scored", justify="right")
    for m, name in enumerate(names):
        col = matrix[:, m]
        valid = col[~col.isnan()]
        table.add_row(name, f"{float(valid.mean()):.4f}" if valid.numel() else "n/a", str(valid.numel()))
    console.print(table)
    if out:
        with out.open("w") as fh:
            for i, row in enumerate(rows):
                values = matrix[i].tolist()
                scored = {n: (None if v != v else v) for n, v in zip(names, values)}
                fh.write(json.dumps({**row, "rewards": scored}) + "\n")
        console.print(f"wrote {out}")


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories (each with metrics.jsonl)")],
    out: Annotated[Path | None, typer.Option(help="output folder (default: the first run's plots/)")] = None,
    smooth: Annotated[int, typer.Option(min=1, help="moving-average window of the training curves (steps)")] = 10,
) -> None:
    """Figures from run directories: objectives, weights, covariances, gradient cosines, clipping (PNG)."""
    from morl.plot import plot_runs

    try:
        written = plot_runs(run_dirs, out, smooth=smooth)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    for item in written:
        console.print(f"wrote [bold]{item.path}[/] ({len(item.panels)} panels)")
    if not written:
        console.print("[yellow]no figure: the runs have no metrics to plot[/]")


@app.command()
def compare(
    recipe: Annotated[Path, typer.Argument(help="base recipe YAML: everything but the method")],
    methods: Annotated[
        str,
        typer.Option(
            help="comma-separated methods: one the recipe runs keeps its settings; others come from <method>.yaml "
            "beside the recipe, a preset shipped with morl (morl/compare/presets), or a component's defaults"
        ),
    ] = "linear,ctwa",
    seeds: Annotated[str, typer.Option(help="comma-separated seeds, shared by every method")] = "0",
    out: Annotated[Path, typer.Option(help="runs go to OUT/<method>/seed<k>, the report to OUT")] = Path(
        "runs/compare"
    ),
    eval_mode: Annotated[str, typer.Option("--eval", help="held-out evaluation to compare: greedy or sampled")] = (
        "greedy"
    ),
    ignore: Annotated[str, typer.Option(help="comma-separated objectives left out of the interference score")] = "",
    plots: Annotated[bool, typer.Option(help="also draw every run's training curves in OUT/plots")] = True,
    set_: SetOption = None,
) -> None:
    """Run one recipe under several methods and seeds; write comparison.md/.png with the interference score."""
    from morl.checkpoint import Interrupted
    from morl.compare import compare as run_compare
    from morl.compare import mean_std
    from morl.pipeline import NonFiniteError
    from morl.rewards import RewardError

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        _fail(f"--seeds expects comma-separated integers, got {seeds!r}")
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        ignored = [o.strip() for o in ignore.split(",") if o.strip()]
        result = run_compare(
            recipe, method_list, seed_list, out, list(set_ or []), mode=eval_mode, ignore=ignored, plots=plots
        )
    except (RewardError, NonFiniteError) as err:
        _fail(str(err), code=1)
    except (RecipeError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"cannot load the policy: {err}")
    except Interrupted as stop:
        err_console.print(f"[yellow]{stop}[/]\nrun the same command again to resume the sweep")
        raise typer.Exit(code=128 + stop.signum) from None
    table = Table(title=f"interference and final held-out {result.mode} evaluation, {len(seed_list)} seed(s)")
    table.add_column("method")
    table.add_column("interference", justify="right")
    for metric in result.metrics:
        table.add_column(metric, justify="right")
    for method in result.methods():
        runs = result.of(method)
        finals = [mean_std([r.final[m] for r in runs], 1 if m == "mean_length" else 3) for m in result.metrics]
        table.add_row(method, mean_std([r.interference for r in runs]), *finals)
    console.print(table)
    for path in result.files:
        console.print(f"wrote [bold]{path}[/]")


@app.command()
def components() -> None:
    """List every registered component with its config fields."""
    for family in FAMILIES:
        table = Table(title=family, show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("class")
        table.add_column("config fields")
        for name, cls in sorted(registered(family).items()):
            fields = ", ".join(f"{f}={_default(info)}" for f, info in cls.Config.model_fields.items())
            table.add_row(name, cls.__name__, fields or "-")
        console.print(table)


@tinymath_app.command("build")
def tinymath_build(
    out: Annotated[Path, typer.Option(help="output model directory")] = Path("tinymath-model"),
    seed: int = 0,
    steps: Annotated[int | None, typer.Option(help="SFT steps (default: the shipped model's)")] = None,
) -> None:
    """Rebuild the TinyMath model (deterministic from the seed; the shipped one is seed 0)."""
    from morl.tinymath import build_tinymath

    kwargs = {"steps": steps} if steps is not None else {}
    path = build_tinymath(out, seed=seed, **kwargs)
    console.print(f"saved {path}")


def _default(info: Any) -> str:
    if info.is_required():
        return "<required>"
    if info.default_factory is not None:
        return repr(info.default_factory())
    return repr(info.default)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard load/save bars drown the training progress bar
    app()


if __name__ == "__main__":
    sys.exit(main())
