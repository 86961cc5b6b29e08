"""``morl``: fit, evaluate and score from the command line; recipes build the same objects as Python."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
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


def _fail(message: str) -> None:
    err_console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code=2)


@app.command()
def fit(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML")],
    set_: SetOption = None,
    output_dir: Annotated[
        str | None, typer.Option(help="run directory (default: train.output_dir or runs/<time>)")
    ] = None,
) -> None:
    """Train with the recipe's components; writes metrics.jsonl, the model and controller state."""
    from morl.recipe import load_data, load_recipe, pipeline_from_recipe

    overrides = list(set_ or [])
    if output_dir:
        overrides.append(f"train.output_dir={output_dir}")
    try:
        parsed = load_recipe(recipe, overrides)
        from morl.recipe import build_components

        build_components(parsed)
        train, evals = load_data(parsed)
    except (RecipeError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    pipeline = pipeline_from_recipe(parsed)
    result = pipeline.fit(train, evals)
    console.print(f"run directory: [bold]{result.run_dir}[/]")


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
    from morl.pipeline import Pipeline
    from morl.policy import Policy
    from morl.recipe import build_components, load_data, load_recipe

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
    pipeline = Pipeline(policy=Policy.from_pretrained(str(model_dir), **options), config=parsed.train, **components)
    state_file = checkpoint / "controller_state.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        for name, reward in zip(pipeline.objectives, pipeline.rewards):
            if name in state.get("rewards", {}):
                reward.load_state_dict(state["rewards"][name])
    scores = pipeline.evaluate(evals)
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
    app()


if __name__ == "__main__":
    sys.exit(main())
