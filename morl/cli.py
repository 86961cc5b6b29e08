"""``morl``: fit, evaluate and score from the command line; recipes build the same objects as Python."""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from morl.components import FAMILIES, RecipeError, registered
from morl.theory.cli import theory_app

if TYPE_CHECKING:
    from morl.run import ResumeMismatch

app = typer.Typer(help="Multi-objective RL fine-tuning of language models.", no_args_is_help=True)
tinymath_app = typer.Typer(help="The embedded TinyMath task and model.", no_args_is_help=True)
app.add_typer(tinymath_app, name="tinymath")
tinysort_app = typer.Typer(help="The embedded TinySort task and model.", no_args_is_help=True)
app.add_typer(tinysort_app, name="tinysort")
app.add_typer(theory_app, name="theory", help="Check the covariance law numerically.")
console = Console()
err_console = Console(stderr=True)

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a recipe field: key.path=value")]


def _runs_rewards(command: Callable[..., None]) -> Callable[..., None]:
    """For a command that calls rewards: the processes they leave running are killed when it exits, and a second
    Ctrl-C ends it even while a reward holds the GIL (``morl.rewards.guard``, ``morl.processes``). Ctrl-C's handler
    is given back as it was when the command returns, so a process that runs commands in turn (a notebook, a test
    runner calling the CLI) keeps its own, for every delivery."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        from morl.processes import reset_on_delivery
        from morl.rewards.guard import stop_leftovers_at_exit

        stop_leftovers_at_exit()
        if threading.current_thread() is not threading.main_thread():
            return command(*args, **kwargs)
        previous = signal.getsignal(signal.SIGINT)
        reset_on_delivery(signal.SIGINT)
        try:
            return command(*args, **kwargs)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)  # installed afresh: no longer reset on delivery

    return run


def _fail(message: str, code: int = 2) -> None:
    """Exit with a message: code 2 for a wrong recipe, dataset or checkpoint, 1 for a run that failed."""
    # a message's [brackets] are text, not markup; soft_wrap: paths in it are never cut by a line break
    err_console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=code)


@app.command()
@_runs_rewards
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
    from morl.checkpoint.errors import CheckpointError
    from morl.data import DataError
    from morl.pipeline import NonFiniteError
    from morl.recipe import build_components, check_runnable, load_data, load_recipe, pipeline_from_recipe
    from morl.rewards import RewardError
    from morl.run import ResumeMismatch, RunDirError
    from morl.run.directory import check_writable
    from morl.signals import Interrupted

    overrides = list(set_ or [])
    if output_dir:
        overrides.append(f"train.output_dir={output_dir}")
    checkpoint = None
    main = _first_process()  # under a launcher every process runs this; one of them speaks and clears
    try:
        parsed = load_recipe(recipe, overrides)
        check_runnable(parsed, build_components(parsed))  # loggers installed, a local model fits, before it loads
        if resume is not None:  # before the data and the model: a wrong path or recipe fails fast
            checkpoint = _checkpoint_to_resume(parsed, resume, accept_change or [], main)
        elif parsed.train.output_dir:
            if main:
                _claim(Path(parsed.train.output_dir), overwrite)
        else:
            check_writable(Path("runs"))  # where the fresh runs/<time> folder will be made
        train, evals = load_data(parsed)
    except (RecipeError, CheckpointError, RunDirError, ResumeMismatch, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    try:
        pipeline = pipeline_from_recipe(parsed)
    except (OSError, ValueError) as err:
        _fail(f"cannot load policy.model={parsed.policy.model!r}: {err}")
    try:
        result = pipeline.fit(
            train, evals, resume_from=checkpoint, overwrite=overwrite, accept_changes=accept_change or []
        )
    except (DataError, RecipeError, CheckpointError, RunDirError, ResumeMismatch) as err:
        _fail(str(err))
    except (RewardError, NonFiniteError) as err:
        _fail(str(err), code=1)
    except OSError as err:  # a full disk, a folder made read-only mid-run: the checkpoints written so far stay
        known = checkpoint.parent.parent if checkpoint is not None else parsed.train.output_dir
        _fail(_stopped_by_disk(err, recipe, Path(known) if known else None), code=1)
    except Interrupted as stop:
        err_console.print(
            f"[yellow]{stop}[/]\nresume with: morl fit {recipe} --resume {stop.checkpoint.parent.parent}"
            if stop.checkpoint
            else f"[yellow]{stop}[/]"
        )
        raise typer.Exit(code=128 + stop.signum) from None
    from morl import distributed

    if distributed.is_main():
        console.print(f"run directory: [bold]{result.run_dir_}[/]")


def _checkpoint_to_resume(parsed: Any, resume: str, accept: list[str], main: bool) -> Path:
    """The checkpoint ``--resume`` names (a run directory or ``latest``), once the recipe is checked against the run's
    and what the resume will do is said; exits 0 when there is nothing to do."""
    from morl.checkpoint.find import find_checkpoint, latest_run
    from morl.checkpoint.load import read_checkpoint
    from morl.run import ResumeMismatch, check_resume
    from morl.run.directory import check_writable

    if resume == "latest":
        out = parsed.train.output_dir
        run = Path(out) if out else latest_run("runs")
    else:
        run = Path(resume)
    checkpoint = find_checkpoint(run)
    check_writable(checkpoint.parent.parent)  # the resumed run writes its checkpoints and metrics there
    saved = read_checkpoint(checkpoint).state
    mine = parsed.model_dump(mode="json")
    try:
        check_resume({k: v for k, v in saved.identity.items() if k in mine}, mine, accept)
    except ResumeMismatch as err:
        raise ResumeMismatch(f"{err}{_repeat_settings(err)}", err.differences, err.unknown) from None
    plan, nothing_to_do = _resume_plan(checkpoint.parent.parent, saved.step, saved.identity, parsed.train.steps)
    if main:
        console.print(escape(plan), soft_wrap=True)
    if nothing_to_do:
        raise typer.Exit(code=0)
    return checkpoint


def _stopped_by_disk(err: OSError, recipe: Path, run_dir: Path | None) -> str:
    """Why a run stopped on a failed write or read (a full disk, a folder made read-only), and how to go on from
    the newest complete checkpoint it kept (or to start again when it has none)."""
    from morl.checkpoint.errors import CheckpointWriteError
    from morl.checkpoint.find import list_checkpoints
    from morl.integrity import free_bytes, is_disk_full, size_text

    if isinstance(err, CheckpointWriteError):
        return f"the run stopped: {err}\nthen: morl fit {recipe} " + (
            f"--resume {err.run_dir}" if err.resumable else f"--output-dir {err.run_dir} --overwrite"
        )
    where = f"{err.filename}: " if err.filename else ""
    text = f"the run stopped: {where}{err.strerror or err}"
    if is_disk_full(err):
        free = free_bytes(Path(err.filename or run_dir or "."))
        text += f" ({size_text(free)} free)" if free is not None else ""
    if run_dir is None and err.filename:
        run_dir = _run_dir_above(Path(err.filename))
    if run_dir is None:
        return text
    fix = "free space on that disk" if is_disk_full(err) else "fix that"
    newest = list_checkpoints(run_dir)[0]
    if newest:
        go_on = f"then: morl fit {recipe} --resume {run_dir}"
        return f"{text}\nits newest complete checkpoint is {newest[-1]}: {fix}, {go_on}"
    return f"{text}\nit has no complete checkpoint: {fix}, then: morl fit {recipe} --output-dir {run_dir} --overwrite"


def _run_dir_above(path: Path) -> Path | None:
    """The run directory (the folder with a manifest.json) that holds ``path``, if any, a few levels up."""
    for folder in list(path.parents)[:4]:
        if (folder / "manifest.json").is_file():
            return folder
    return None


def _first_process() -> bool:
    """Whether this is process 0 of a launch (or the only process); read from the launcher's environment, since the
    process group does not exist yet."""
    return os.environ.get("RANK", "0") == "0"


def _claim(run_dir: Path, overwrite: bool) -> None:
    """``check_new_run``, saying what it removed: the run ``--overwrite`` discards, or one that stopped before its
    first step (a plain rerun takes its folder over)."""
    from morl.run import check_new_run

    removed = check_new_run(run_dir, overwrite=overwrite)
    if removed:
        why = "--overwrite" if overwrite else "its run stopped before its first step"
        message = f"{run_dir}: {why}: removed that run's files ({', '.join(removed)}); any other file is kept"
        console.print(escape(message), soft_wrap=True)


#: Seeds are below 2**31: numpy takes seeds below 2**32, and a run adds an offset per process and per step to its seed.
SEED_LIMIT = 2**31


def _check_seed(seed: int, what: str) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise RecipeError(
            f"{what}: {seed} is not a seed; give an integer from 0 to 2**31 - 1 (numpy takes seeds below 2**32, and "
            "each process and step adds an offset)"
        )


def _resume_plan(run_dir: Path, step: int, identity: dict[str, Any], target: int) -> tuple[str, bool]:
    """What resuming ``run_dir`` from its checkpoint at ``step`` to ``train.steps=target`` does, in words, and whether
    there is nothing to do (the run finished at that target). ``ValueError`` for a target below ``step``; the
    run's manifest is read here, so a damaged one stops the resume before the model loads."""
    from morl.checkpoint.errors import CheckpointError
    from morl.run import Manifest

    manifest = Manifest.load(run_dir)
    if manifest is None:
        raise CheckpointError(f"{run_dir} has checkpoints but no manifest.json: it was not written by fit")
    if target < step:
        raise ValueError(
            f"cannot resume {run_dir} to train.steps={target}: it already reached step {step} (its newest "
            f"checkpoint). Give train.steps={step} or more (--set train.steps=N) to continue it, or start a new run "
            "in another output directory."
        )
    last = manifest.current_segment
    if target == step:
        if last.status == "finished" and last.to_step == step and _final_state_step(run_dir) == step:
            return (
                f"nothing to do: {run_dir} already reached train.steps={target}. To train it further, resume it "
                f"with --set train.steps=N, N > {step}.",
                True,
            )
        return f"finishing {run_dir} at step {step} (train.steps={target}): its final evaluation and model", False
    run_target = (identity.get("train") or {}).get("steps")
    if not isinstance(run_target, int) or run_target == target:
        return f"continuing {run_dir} from step {step} to step {target}", False
    change = "extending" if target > run_target else "shortening"
    return f"{change} {run_dir} from {run_target} to {target} steps (train.steps), resuming at step {step}", False


def _final_state_step(run_dir: Path) -> int | None:
    """The step of a run's final ``training_state.json``, written after its final model: ``None`` when there is none
    (the run stopped while writing them, on a full disk say)."""
    try:
        return json.loads((run_dir / "training_state.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _repeat_settings(err: ResumeMismatch) -> str:
    """For a refused resume: the ``--set`` options that give back the run's own values (settings it was started
    with on the command line, most often), for each that ``--set`` can write."""
    options = []
    for difference in err.differences:
        value = _as_set_value(difference.old)
        if value is not None:
            options.append("--set " + shlex.quote(f"{difference.path}={value}"))
    if not options:
        return ""
    return "\nTo resume the run as it was started, give its values again: " + " ".join(options)


def _as_set_value(value: Any) -> str | None:
    """``value`` as ``--set`` reads it back (YAML); None for what is absent or a mapping."""
    import yaml

    if isinstance(value, str):
        return value if yaml.safe_load(value) == value else json.dumps(value)
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    if isinstance(value, list) and all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
        return json.dumps(value, separators=(",", ":"))
    return None


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
    """Check a recipe without loading a model: its fields (finite numbers), that each component is of its family and
    they fit together, that its loggers are installed, and for a local model its kind and context length."""
    from morl.recipe import load_recipe, validate_recipe

    try:
        parsed = load_recipe(recipe, list(set_ or []))
        components, checks = validate_recipe(parsed)
    except (RecipeError, ValueError) as err:
        _fail(str(err))
    console.print(f"[green]ok[/]: {escape(str(recipe))}")
    for key, value in components.items():
        console.print(f"  {key}: {escape(repr(value))}")
    console.print("checked:")
    for line in checks:
        console.print(f"  {escape(line)}")


@app.command("eval")
@_runs_rewards
def eval_(
    recipe: Path,
    checkpoint: Annotated[Path, typer.Option(help="a run directory or a Hugging Face model directory")],
    set_: SetOption = None,
) -> None:
    """Score a checkpoint on the recipe's eval split (greedy and sampled).

    Greedy scores equal the run's own final evaluation; sampled scores draw from a fresh random stream (the run drew
    from its own at that step), so they differ from the run's by sampling noise: about ±0.03 for an accuracy near
    0.7 on 200 prompts (one standard error).
    """
    from morl.checkpoint.errors import CheckpointError
    from morl.evaluation import Evaluator
    from morl.policy import Policy
    from morl.recipe import build_components, load_data, load_recipe
    from morl.rewards import PlacedOnDevice, RewardError, RewardFn, objective_name
    from morl.state import TrainingState

    try:
        parsed = load_recipe(recipe, list(set_ or []))
        components = build_components(parsed)
        _, evals = load_data(parsed)
        source = _eval_source(checkpoint)  # before the model loads: a missing, empty or torn one fails fast
    except (RecipeError, CheckpointError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    if not evals:
        _fail("the recipe has no eval data (data.eval)")
    model_dir = source / "model" if (source / "model").is_dir() else source
    options = parsed.policy.model_dump(exclude={"model"})
    try:
        policy = Policy.from_pretrained(str(model_dir), **options)
    except (OSError, ValueError) as err:
        _fail(f"--checkpoint {checkpoint}: cannot load the policy from {model_dir}: {err}")
    rewards = components["rewards"]
    for reward in rewards:  # a reward model scores on the policy's device
        if isinstance(reward, PlacedOnDevice):
            reward.place(policy.device)
    state_file = source / "training_state.json"
    if state_file.exists():  # stateful rewards (the running mean of conciseness) as the run left them
        try:
            trained = TrainingState.from_json(json.loads(state_file.read_text()))
            saved = trained.parts
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            _fail(f"{state_file}: unreadable ({type(err).__name__}: {err}); it holds the rewards' running state")
        _say_if_another_task(trained.identity, parsed.model_dump(mode="json"), checkpoint)
        for name, reward in zip([objective_name(r) for r in rewards], rewards):
            if isinstance(reward, RewardFn) and f"reward/{name}" in saved:
                reward.load_state_dict(saved[f"reward/{name}"]["state"])
    train = parsed.train
    evaluator = Evaluator(
        components["rollout"],
        rewards,
        train.eval_batch_size,
        train.on_reward_error,
        train.reward_timeout_s,
        train.reward_isolation,
    )
    modes = [m for m, on in (("greedy", parsed.train.eval_greedy), ("sampled", parsed.train.eval_sampled)) if on]
    try:
        scores = evaluator.evaluate(policy, evals, modes)
    except RewardError as err:
        _fail(str(err), code=1)
    table = Table(title=f"eval: {checkpoint}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in scores.items():
        table.add_row(key.removeprefix("eval/"), f"{value:.4f}")
    console.print(table)


@app.command()
@_runs_rewards
def score(
    file: Annotated[Path, typer.Argument(help="JSONL with prompt, completion, answer and any columns")],
    rewards: Annotated[str, typer.Option(help="comma-separated reward names or import paths")] = (
        "accuracy,conciseness,clarity"
    ),
    out: Annotated[Path | None, typer.Option(help="write the rows with their rewards")] = None,
    mean_length: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="conciseness: the length (characters) a completion must be under; default: the file's own mean",
        ),
    ] = None,
    reward_timeout_s: Annotated[
        float,
        typer.Option(
            min=0,
            help="seconds one reward call may take (a reward's own call_timeout_s wins); rows of a call past it are "
            "not scored and count as timed out. 0: no limit",
        ),
    ] = 60.0,
) -> None:
    """Score completions that already exist and print, per objective, the mean and how many rows were scored, not
    applicable, failed or timed out. A failed row gets ``null`` and the reason in ``--out`` (never a silent 0);
    any failure makes the exit code 1, after everything is written."""
    from morl.components import build
    from morl.rewards import Conciseness, objective_name

    names_given = [name.strip() for name in rewards.split(",") if name.strip()]
    try:
        _check_unique("--rewards", names_given)
        fns = [build("reward", name) for name in names_given]
        _check_unique("--rewards objective", [objective_name(f) for f in fns])
        lines, rows = _read_jsonl(file)
        _check_score_rows(file, lines, rows)
        _check_out(out)
    except (RecipeError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    if not fns:
        _fail(f"--rewards {rewards!r}: no reward names")
    names = [objective_name(f) for f in fns]
    keys = dict.fromkeys(k for row in rows for k in row if k not in ("prompt", "completion"))  # every row's
    columns = {k: [row.get(k) for row in rows] for k in keys}
    lengths = [len(row["completion"]) for row in rows]
    for fn in fns:  # against this file's completions (or the length given), not a run's that this file never saw
        if isinstance(fn, Conciseness):
            fn.count_, fn.total_ = (1, float(mean_length)) if mean_length is not None else (len(rows), sum(lengths))
            console.print(f"{objective_name(fn)}: shorter than {fn.mean_length:.1f} characters scores 1")
    values: dict[str, list[float | None]] = {}
    errors: dict[str, dict[int, str]] = {}
    table = Table(title=f"{file} ({len(rows)} completions)")
    # every row is in exactly one of scored, not applicable, failed and timed out (its call ran past the limit);
    # "checks cut off" counts a reward's own cut-off checks (accuracy's), already within scored or not applicable
    table.caption = (
        "n/a: not applicable; cut off: the reward's own checks stopped at their limit (counted within scored or n/a); "
        "timed out: rows of a call past the time limit, not scored"
    )
    for heading in ("objective", "mean", "scored", "n/a", "failed", "cut off", "timed out"):
        table.add_column(heading, justify="left" if heading == "objective" else "right")
    limit = reward_timeout_s or None
    for fn, name in zip(fns, names):
        before = fn.counters().get("timeouts", 0.0) if hasattr(fn, "counters") else 0.0
        late: dict[str, int] = {}  # rows whose reward call ran past its time limit: not scored, counted as timed out
        try:
            column, errors[name] = _score_one_reward(fn, rows, columns, limit, late)
        except ValueError as err:  # the rows cannot be handed to rewards at all (a column named like an argument)
            _fail(f"{file}: {err}")
        cut_off = int((fn.counters().get("timeouts", 0.0) if hasattr(fn, "counters") else 0.0) - before)
        timed_out = late.get(name, 0)
        values[name] = column
        scored = [v for v in column if v is not None]
        n_failed = len(errors[name])
        table.add_row(
            name,
            f"{sum(scored) / len(scored):.4f}" if scored else "n/a",
            str(len(scored)),
            str(len(rows) - len(scored) - n_failed - late.get(name, 0)),
            str(n_failed),
            str(cut_off),
            str(timed_out),
        )
    console.print(table)
    if out:
        records = []
        for i, row in enumerate(rows):
            record = {**row, "rewards": {name: values[name][i] for name in names}}
            reasons = {name: errors[name][i] for name in names if i in errors[name]}
            if reasons:
                record["reward_errors"] = reasons
            records.append(json.dumps(record))
        try:
            _write_atomically(out, records)
        except OSError as err:
            _fail(f"--out {out}: cannot write ({err})", code=1)
        console.print(f"wrote {out}")
    failed = {name: e for name, e in errors.items() if e}
    if failed:
        notes = [
            f"reward {name!r} failed on {len(e)} row(s); first: {file}:{lines[min(e)]}: {e[min(e)]}"
            for name, e in failed.items()
        ]
        _fail("\n".join(notes), code=1)


def _score_one_reward(
    fn: Any,
    rows: list[dict[str, Any]],
    columns: dict[str, list[Any]],
    timeout_s: float | None = None,
    timeouts: dict[str, int] | None = None,
) -> tuple[list[float | None], dict[int, str]]:
    """One reward over every row: its values (None: not applicable or failed) and, by row, why it failed.

    The whole file is scored in one call; only when that call fails is each row scored alone, to tell the rows that
    make the reward fail (with the reason) from the others, which keep their scores."""
    from morl.rewards import RewardError

    try:
        matrix = _score_matrix([fn], rows, columns, timeout_s, timeouts)
    except RewardError:
        pass
    else:
        return [None if v != v else v for v in matrix[:, 0].tolist()], {}
    column: list[float | None] = []
    errors: dict[int, str] = {}
    for i, row in enumerate(rows):
        try:
            one = {k: [v[i]] for k, v in columns.items()}
            value = _score_matrix([fn], [row], one, timeout_s, timeouts)[0, 0].item()
        except RewardError as err:
            errors[i] = " ".join(str(err).split("\n")[0].split())
            value = None
        column.append(None if value is None or value != value else value)
    return column, errors


def _score_matrix(
    fns: list[Any],
    rows: list[dict[str, Any]],
    columns: dict[str, list[Any]],
    timeout_s: float | None = None,
    timeouts: dict[str, int] | None = None,
) -> Any:
    """The reward matrix of ``rows`` (NaN: not applicable or past the time limit, added up in ``timeouts``);
    ``RewardError`` when a reward fails on one. ``timeout_s``: each call's limit unless the reward sets its own."""
    from morl.rewards import score_rewards

    counted: dict[str, int] = {}
    matrix, _ = score_rewards(
        fns,
        [r["prompt"] for r in rows],
        [r["completion"] for r in rows],
        columns,
        training=False,
        timeout_s=timeout_s,
        timeouts=counted,
    )
    if timeouts is not None:
        for name, count in counted.items():
            timeouts[name] = timeouts.get(name, 0) + count
    return matrix


def _check_unique(what: str, names: list[str]) -> None:
    """``ValueError`` naming a repeated name: two objectives of one name would overwrite each other's column."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name!r} is given twice; each objective needs its own name")
        seen.add(name)


def _check_score_rows(path: Path, lines: list[int], rows: list[Any]) -> None:
    """``ValueError`` naming the line of the first row ``morl score`` cannot hand to a reward."""
    for line, row in zip(lines, rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
        for field in ("prompt", "completion"):
            if field not in row:
                raise ValueError(f"{path}:{line}: no {field!r} field (fields: {sorted(row)})")
            if not isinstance(row[field], str):
                raise ValueError(
                    f"{path}:{line}: {field} must be text, got {type(row[field]).__name__}: {row[field]!r:.60}"
                )


def _check_out(out: Path | None) -> None:
    """``ValueError`` before any scoring when ``--out`` cannot be written, so no work is lost at the end."""
    if out is None:
        return
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name, e.g. {out / 'scored.jsonl'}")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"--out {out}: cannot write in {out.parent} (permission denied)")


def _write_atomically(path: Path, lines: list[str]) -> None:
    """Write beside ``path`` and rename over it: a failure midway leaves the old file (maybe the input) whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
        for note in item.notes:
            console.print(f"  [dim]{escape(note)}[/]")
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
    from morl.compare import compare as run_compare
    from morl.compare import mean_std
    from morl.pipeline import NonFiniteError
    from morl.rewards import RewardError
    from morl.signals import Interrupted

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        _fail(f"--seeds expects comma-separated integers, got {seeds!r}")
    for seed in seed_list:
        try:
            _check_seed(seed, "--seeds")
        except RecipeError as err:
            _fail(str(err))
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


@tinysort_app.command("build")
def tinysort_build(
    out: Annotated[Path, typer.Option(help="output model directory")] = Path("tinysort-model"),
    seed: int = 0,
    steps: Annotated[int | None, typer.Option(help="SFT steps (default: the shipped model's)")] = None,
) -> None:
    """Rebuild the TinySort model (deterministic from the seed; the shipped one is seed 0)."""
    from morl.tinysort import build_tinysort

    kwargs = {"steps": steps} if steps is not None else {}
    path = build_tinysort(out, seed=seed, **kwargs)
    console.print(f"saved {path}")


def _say_if_another_task(trained: dict[str, Any], recipe: dict[str, Any], checkpoint: Path) -> None:
    """Evaluating a model on another task than it trained on can be meant, but should never pass unsaid."""
    differs = [
        f"{key}: trained with {trained[key]!r}, evaluated with {recipe.get(key)!r}"
        for key in ("rewards", "data")
        if key in trained and _task_of(key, trained[key]) != _task_of(key, recipe.get(key))
    ]
    if differs:
        said = escape("; ".join(differs))
        err_console.print(f"[yellow]--checkpoint {escape(str(checkpoint))} was trained on another task[/]: {said}")


def _task_of(key: str, value: Any) -> Any:
    """What names a task in a recipe section: the rewards, or the training and evaluation data sources."""
    if key == "data" and isinstance(value, dict):
        return value.get("train"), value.get("eval")
    return value


def _eval_source(checkpoint: Path) -> Path:
    """The folder ``morl eval --checkpoint`` reads: a run's final model, else its newest intact checkpoint; a
    checkpoint folder, checked whole; or a model directory as given (``Policy.from_pretrained`` checks that one).

    ``CheckpointError`` or ``FileNotFoundError`` naming the path when there is nothing to evaluate there, so the
    recipe's model never loads for nothing.
    """
    from morl.checkpoint.errors import CheckpointError
    from morl.checkpoint.find import find_checkpoint
    from morl.checkpoint.layout import CHECKPOINTS, MARKER
    from morl.checkpoint.verify import verify_checkpoint

    if not checkpoint.exists():
        raise FileNotFoundError(
            f"--checkpoint {checkpoint}: no such file or directory; give a run directory, one of its "
            "checkpoints/step-N folders, or a Hugging Face model directory"
        )
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: a file, not a directory (a run, checkpoint or model)")
    if checkpoint.name.startswith("step-") or (checkpoint / MARKER).exists() or (checkpoint / "optimizer.pt").exists():
        if not (checkpoint / MARKER).is_file():
            raise CheckpointError(
                f"--checkpoint {checkpoint}: torn checkpoint (no {MARKER!r} marker: killed while "
                f"writing); give the run directory ({checkpoint.parent.parent}) for its newest "
                "intact one"
            )
        verify_checkpoint(checkpoint)
        return checkpoint
    if (checkpoint / "model").is_dir():
        return checkpoint
    if (checkpoint / CHECKPOINTS).is_dir():  # a run stopped before writing its final model
        found = find_checkpoint(checkpoint)
        err_console.print(f"{checkpoint} has no final model yet; evaluating its newest intact checkpoint {found}")
        return found
    if not any(checkpoint.iterdir()):
        raise FileNotFoundError(
            f"--checkpoint {checkpoint}: empty directory; give a run directory, one of its checkpoints/step-N "
            "folders, or a Hugging Face model directory (config.json and weights)"
        )
    return checkpoint


def _default(info: Any) -> str:
    if info.is_required():
        return "<required>"
    if info.default_factory is not None:
        return repr(info.default_factory())
    return repr(info.default)


#: ``morl score`` holds the whole file in memory, and its rows in Python: a bigger file is refused before it is read.
SCORE_MAX_BYTES = 2**30


def _read_jsonl(path: Path) -> tuple[list[int], list[Any]]:
    """The rows of a JSONL file and the line each came from (for messages), each line decoded as UTF-8 alone so an
    undecodable byte is reported with its line. Only a regular file is read (a named pipe or a device would block or
    never end), of at most ``SCORE_MAX_BYTES``."""
    from morl.run import read_regular_file

    try:
        data = read_regular_file(path, limit=SCORE_MAX_BYTES)
    except ValueError as err:
        raise ValueError(f"{err}; give a JSONL file") from None
    lines, rows = [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{path}:{number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                "save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        lines.append(number)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return lines, rows


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard load/save bars drown the training progress bar
    app()


if __name__ == "__main__":
    sys.exit(main())
