"""The package's shape: no module of morl imports another in a cycle (TYPE_CHECKING imports aside)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "morl"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """morl modules imported anywhere in the file (functions included), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }

    def owner(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names if a.name.startswith("morl")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("morl"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else owner(node.module))
    return found - {""}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_among_morl_modules():
    modules = _modules()
    graph = {name: {m for m in _imports(path, modules) if m in modules and m != name} for name, path in modules.items()}
    # a package's __init__ re-exports its submodules; a submodule importing its own package would loop back
    assert _cycles(graph) == []


FAMILIES = {"RewardLevel", "AdvantageLevel", "GradientLevel"}


def test_only_controllers_ask_which_family_a_controller_is():
    """A weighting family decides for itself (``controller.weigh``, ``loss_combiner``): code outside
    ``morl/controllers`` never branches on ``isinstance(x, RewardLevel | AdvantageLevel | GradientLevel)``."""
    asking = []
    for path in PACKAGE.rglob("*.py"):
        if "controllers" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                named |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                if named & FAMILIES:
                    asking.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert asking == []


def test_observers_and_shared_statistics_depend_on_no_method():
    """The diagnostics, the forecast and the shared statistics serve every method: none imports a controller."""
    modules = _modules()
    for name in ("morl.diagnostics", "morl.forecast", "morl.statistics", "morl.trainer", "morl.loop"):
        imported = _imports(modules[name], modules)
        assert not {m for m in imported if m.startswith("morl.controllers.") and m != "morl.controllers.base"}, name
    for name in ("morl.diagnostics", "morl.forecast", "morl.statistics"):
        assert not {m for m in _imports(modules[name], modules) if m.startswith("morl.controllers")}, name


def _class_and_method_lines(path: Path, cls: str, method: str) -> tuple[int, int]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            inner = next(f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == method)
            return node.end_lineno - node.lineno + 1, inner.end_lineno - inner.lineno + 1
    raise AssertionError(f"no class {cls}")


def test_the_step_fits_on_one_screen():
    """The trainer keeps the step and the step reads like the algorithm; the loop, saving and resuming live in
    morl.loop and morl.resume."""
    trainer_lines, step_lines = _class_and_method_lines(PACKAGE / "trainer.py", "Trainer", "step")
    assert trainer_lines <= 400 and step_lines <= 60, (trainer_lines, step_lines)
