"""README.md's examples as a reader runs them: the Python blocks run as written, the quick ``morl`` commands run,
and the long ones (training, sweeps, a model rebuild) parse with the options and recipes they name.

``make quickstart`` and ``make test`` are left to CI, which runs both.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from morl.cli import app
from morl.recipe import build_components, load_recipe

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
QUICK = {"validate", "components", "theory", "score"}  # run; the others only parse
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.MULTILINE | re.DOTALL)
COMMANDS = [
    line.strip()
    for block in re.findall(r"^```bash\n(.*?)^```", README, re.MULTILINE | re.DOTALL)
    for line in block.splitlines()
    if line.strip().startswith("morl ")
]
# a completion file for `morl score FILE`, when the README names one that a fresh folder does not have
COMPLETIONS = [
    {"prompt": "Tom has 3 apples and buys 4 more. How many apples?", "completion": "1. 3 + 4 = 7\n\\boxed{7}",
     "answer": "7"},
    {"prompt": "A box holds 6 pens; 2 are taken. How many are left?", "completion": "5", "answer": "4"},
]  # fmt: skip


def command_id(line: str) -> str:
    return " ".join(shlex.split(line, comments=True)[1:])


def command_of(args: list[str]) -> tuple[list[str], Any]:
    """The click command ``morl ARGS`` runs (through sub-groups such as ``tinymath``) and the rest of the args.

    Typer carries its own copy of click, so a group is told by its sub-commands, not by click's classes."""
    command = typer.main.get_command(app)
    while hasattr(command, "commands"):
        name, *args = args
        assert name in command.commands, f"morl has no command {name!r} (commands: {sorted(command.commands)})"
        command = command.commands[name]
    return args, command


def test_the_readme_has_examples():
    assert PYTHON_BLOCKS and COMMANDS
    assert {shlex.split(c, comments=True)[1] for c in COMMANDS} >= {"fit", "validate", "score", "compare"}


@pytest.fixture
def reader_folder(tmp_path, monkeypatch) -> Path:
    """An empty folder with the repository's ``cookbook/`` in it, where a reader runs the examples."""
    (tmp_path / "cookbook").symlink_to(REPO / "cookbook")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=[f"python-{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_example_runs_as_written(code, reader_folder):
    """As a script in a fresh folder (the "Use it from Python" example trains 100 steps: about a minute)."""
    script = reader_folder / "example.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=reader_folder, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, f"README example failed:\n{code}\n{done.stderr[-4000:]}"
    if ".fit(" in code:
        assert list(reader_folder.glob("runs/**/manifest.json")), "the example trained but wrote no run directory"


@pytest.mark.parametrize("line", COMMANDS, ids=command_id)
def test_command_parses_with_the_options_it_names(line, reader_folder):
    """Every option is one the command takes, its values parse, and a recipe it names validates with its --set."""
    args, command = command_of(shlex.split(line, comments=True)[1:])
    known = {opt for param in command.params for opt in param.opts}
    unknown = [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in known]
    assert not unknown, f"{line}: `morl {command.name}` takes no {unknown} (its options: {sorted(known)})"
    context = command.make_context(command.name, list(args))  # parses and converts, runs nothing
    recipe = context.params.get("recipe")
    if recipe is not None:
        assert Path(recipe).is_file(), f"{line}: no recipe {recipe}"
        build_components(load_recipe(recipe, list(context.params.get("set_") or [])))


@pytest.mark.parametrize("line", [c for c in COMMANDS if shlex.split(c, comments=True)[1] in QUICK], ids=command_id)
def test_quick_command_runs_as_written(line, reader_folder):
    args = shlex.split(line, comments=True)[1:]
    if args[0] == "score" and not Path(args[1]).exists():
        Path(args[1]).write_text("".join(json.dumps(row) + "\n" for row in COMPLETIONS))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{line}\n{result.output}"
    if args[0] == "score" and "--out" in args:
        written = Path(args[args.index("--out") + 1]).read_text().splitlines()
        assert len(written) == len(COMPLETIONS) and "rewards" in json.loads(written[0])
