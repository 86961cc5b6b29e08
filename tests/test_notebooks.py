"""Every cookbook notebook runs top to bottom in a fresh kernel (``MORL_SMALL=1`` lets a notebook shrink itself).

A notebook that cannot run here (it needs a GPU, say) opts out with ``"morl": {"execute": false, "reason": ...}`` in
its metadata; it is still checked for stored outputs and for its opening cell.
"""

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "cookbook").glob("*.ipynb"))
NOTEBOOK_TIMEOUT_S = 300  # for the whole notebook: each cell gets what is left of it


def _skip_reason(nb) -> str | None:
    options = nb.metadata.get("morl", {})
    return None if options.get("execute", True) else options.get("reason", "marked not to execute")


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if ".ipynb_checkpoints" not in p.parts and "__pycache__" not in p.parts}


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty} have stored outputs; strip them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_opens_with_what_and_how_long(path):
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), (
        f"{path.name}: open with a titled markdown cell"
    )
    assert "How long" in first.source, f"{path.name}: say in the first cell how long it takes on a CPU"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, tmp_path):
    nb = nbformat.read(path, as_version=4)
    reason = _skip_reason(nb)
    if reason:
        pytest.skip(f"{path.name}: {reason}")
    monkeypatch.setenv("MORL_SMALL", "1")
    monkeypatch.setenv("MORL_RUNS_DIR", str(tmp_path))  # notebooks write their runs here, never into the repo
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    before = _files(path.parent)
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    created = sorted(str(p.relative_to(ROOT)) for p in _files(path.parent) - before)
    assert not created, f"{path.name} wrote into the repository: {created}; write under MORL_RUNS_DIR"
    executed = os.environ.get("MORL_EXECUTED_NOTEBOOKS")  # `make test` keeps the run, with its outputs, for the site
    if executed:
        out = Path(executed) / "cookbook" / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(for_the_site(nb, tmp_path), out)


def for_the_site(nb, runs_dir: Path):
    """The executed notebook as a reader should see it: no tqdm warnings about widgets the docs do not have, and
    the run folder shown as ``runs/`` rather than a temporary path."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") != "stream":
                continue
            lines = output["text"].splitlines(keepends=True)
            kept, skip = [], False
            for line in lines:
                if "TqdmWarning" in line:
                    skip = True  # the warning and its source line
                    continue
                if skip and line.strip().startswith(("warnings.warn", "from .autonotebook")):
                    continue
                skip = False
                kept.append(line)
            output["text"] = "".join(kept).replace(str(runs_dir), "runs")
        cell["outputs"] = [o for o in cell.get("outputs", []) if o.get("output_type") != "stream" or o["text"]]
    return nb


def test_the_site_copy_drops_tqdm_warnings_and_temporary_paths(tmp_path):
    nb = nbformat.v4.new_notebook()
    warning = (
        f"{tmp_path}/x.py:1: TqdmWarning: IProgress not found. Please update jupyter and ipywidgets.\n"
        "  from .autonotebook import tqdm as notebook_tqdm\n"
    )
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=warning),
        nbformat.v4.new_output("stream", name="stdout", text=f"run directory: {tmp_path}/quickstart/ctwa\n"),
    ]
    nb.cells = [cell]
    shown = for_the_site(nb, tmp_path).cells[0].outputs
    assert [o["text"] for o in shown] == ["run directory: runs/quickstart/ctwa\n"]
