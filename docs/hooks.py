"""mkdocs hooks: the parts of the documentation that are read from the code at build time, so they cannot drift.

Markers in a page's Markdown are replaced before it is rendered:

- ``<!-- morl:components FAMILY -->``: every registered component of the family (``morl.components.registered``):
  its registry name, where its weights act (controllers: the weighting family they subclass, ``cls.level``;
  scalarizers: always the rewards), its docstrings (mkdocstrings) and a table of its config fields — type,
  constraints, default, description — read from its pydantic ``Config``;
- ``<!-- morl:config dotted.path.Model -->``: the field table of any pydantic model (``morl.pipeline.TrainConfig``);
- ``<!-- morl:include GLOB -->``: every file matching GLOB (relative to the repository) in a fenced block;
- ``<!-- morl:markdown PATH -->``: a Markdown file of the repository (a folder's README), headings one level down;
- ``<!-- morl:cli module:app -->``: the reference of a Typer application, every command and option (Typer's own
  ``typer ... utils docs`` generator).

The cookbook notebooks (``cookbook/*.ipynb``) are added to the site as they are in the repository and rendered by
mkdocs-jupyter without executing; their links to each other are pointed at the rendered pages. A marker that
names nothing, or a notebook missing from the navigation, is a warning, so ``mkdocs build --strict`` fails on it.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.morl")
ROOT = Path(__file__).resolve().parents[1]
COOKBOOK = "cookbook"
MARKER = re.compile(r"^<!-- morl:(\w+) (\S+) -->$", re.MULTILINE)
# a controller's ``level`` (set by its family: RewardLevel, AdvantageLevel, GradientLevel) -> what its weights combine
WHERE = {"reward": "rewards", "advantage": "advantages", "gradient": "gradients"}


# ---- notebooks --------------------------------------------------------------------------------------------------


def _executed_copy(name: str) -> Path | None:
    """The notebook as the test suite ran it (``make test`` sets ``MORL_EXECUTED_NOTEBOOKS``), outputs included."""
    folder = os.environ.get("MORL_EXECUTED_NOTEBOOKS")
    copy = Path(folder) / COOKBOOK / name if folder else None
    return copy if copy is not None and copy.is_file() else None


@event_priority(100)  # before mkdocs-jupyter wraps the notebooks
def on_files(files: Files, config: Any) -> Files:
    for path in sorted((ROOT / COOKBOOK).glob("*.ipynb")):
        executed = _executed_copy(path.name)
        src_dir = str(Path(os.environ["MORL_EXECUTED_NOTEBOOKS"]).resolve()) if executed else str(ROOT)
        files.append(File(f"{COOKBOOK}/{path.name}", src_dir, config["site_dir"], config["use_directory_urls"]))
    return files


def on_nav(nav: Any, config: Any, files: Files) -> Any:
    listed = {page.file.src_uri for page in nav.pages}
    for path in sorted((ROOT / COOKBOOK).glob("*.ipynb")):
        if f"{COOKBOOK}/{path.name}" not in listed:
            log.warning(f"{COOKBOOK}/{path.name} is not in the nav of mkdocs.yml (Cookbook section)")
    return nav


_EXECUTED_NOTE = (
    '<div class="admonition note"><p class="admonition-title">Outputs</p><p>The outputs on this page come from the '
    "test suite's run of this notebook at small size (<code>MORL_SMALL=1</code>: fewer steps and prompts), so numbers "
    "and curves are shorter and noisier than the text's full-size figures.</p></div>"
)
_NOTEBOOK_LINK = re.compile(r'href="(?:\./)?([\w-]+)\.ipynb(#[^"]*)?"')
_SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj):(<code>)")


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri.startswith(f"{COOKBOOK}/") and page.file.src_uri.endswith(".ipynb"):
        # a notebook's link to a sibling notebook, as written for Jupyter, to the sibling's page
        prefix = "../" if config["use_directory_urls"] else ""
        suffix = "/" if config["use_directory_urls"] else ".html"
        html = _NOTEBOOK_LINK.sub(lambda m: f'href="{prefix}{m.group(1)}{suffix}{m.group(2) or ""}"', html)
        if _executed_copy(Path(page.file.src_uri).name):
            html = _EXECUTED_NOTE + html
    return _SPHINX_ROLE.sub(r"\1", html)  # docstrings' :class:`X` roles, shown as plain code


# ---- markers ----------------------------------------------------------------------------------------------------


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    def replace(match: re.Match) -> str:
        kind, arg = match.group(1), match.group(2)
        where = f"{page.file.src_uri}: <!-- morl:{kind} {arg} -->"
        try:
            if kind == "components":
                return components_markdown(arg)
            if kind == "config":
                module, _, name = arg.rpartition(".")
                return config_table(getattr(importlib.import_module(module), name))
            if kind == "include":
                return include_markdown(arg)
            if kind == "cli":
                return cli_markdown(arg)
            if kind == "markdown":
                return markdown_file(arg)
        except (ImportError, AttributeError, ValueError) as err:
            log.warning(f"{where}: {err}")
            return ""
        log.warning(f"{where}: unknown marker (components, config, include, markdown or cli)")
        return ""

    return MARKER.sub(replace, markdown)


def components_markdown(family: str) -> str:
    from morl.components import registered

    table = registered(family)
    if not table:
        raise ValueError(f"no registered component in family {family!r}")
    classes = list(table.items())
    if family == "controller":  # grouped by where their weights act
        order = list(WHERE)
        for name, cls in classes:
            if cls.level not in WHERE:
                raise ValueError(f"controller {name!r} ({cls.__qualname__}) subclasses no weighting family")
        classes.sort(key=lambda item: order.index(item[1].level))
    out = [summary_table(family, classes), ""]
    seen_modules: set[str] = set()
    for name, cls in classes:
        out += component_section(family, name, cls, first_in_module=cls.__module__ not in seen_modules)
        seen_modules.add(cls.__module__)
    return "\n".join(out)


def summary_table(family: str, classes: list[tuple[str, type]]) -> str:
    controller = family == "controller"
    head = (
        "| name | class | family | weights act on | normalisation | needs | summary |"
        if controller
        else "| name | class | summary |"
    )
    rows = [head, "|---" * head.count(" | ") + "|---|"]
    for name, cls in classes:
        cells = [f"[`{name}`](#{anchor(name)})", f"`{cls.__name__}`"]
        if controller:
            cells += [f"`{family_of(cls)}`", WHERE[cls.level], cls.normalization, needs_text(default_needs(cls)) or "—"]
        cells.append(first_sentence(cls.__doc__))
        rows.append(table_row(cells))
    return "\n".join(rows)


def family_of(cls: type) -> str:
    """The weighting family a controller subclasses (``RewardLevel``, ``AdvantageLevel`` or ``GradientLevel``)."""
    from morl.controllers import AdvantageLevel, GradientLevel, RewardLevel

    return next(f.__name__ for f in (RewardLevel, AdvantageLevel, GradientLevel) if issubclass(cls, f))


def default_needs(cls: type) -> frozenset:
    """A controller's needs: a class attribute, or a property of its settings (CTWA's), read from its defaults."""
    return cls().needs if isinstance(inspect.getattr_static(cls, "needs"), property) else cls.needs


def needs_text(needs: frozenset) -> str:
    """``Need`` members as their Python names, e.g. `Need.CLIPPED_WEIGHTS`."""
    return ", ".join(f"`Need.{n.name}`" for n in sorted(needs, key=lambda n: n.name))


def table_row(cells: list[str]) -> str:
    """A Markdown table row; pipes outside code spans are escaped (inside them, the table parser skips them)."""

    def escape(cell: str) -> str:
        parts = cell.replace("\n", " ").split("`")
        parts[::2] = [p.replace("|", "\\|") for p in parts[::2]]
        return "`".join(parts)

    return "| " + " | ".join(escape(cell) for cell in cells) + " |"


def component_section(family: str, name: str, cls: type, first_in_module: bool) -> list[str]:
    path = f"{cls.__module__}.{cls.__qualname__}"
    facts = [f"`{family}: {name}` in a recipe", f"class `{path}`"]
    if family == "controller":
        facts.append(f"a `{family_of(cls)}`: weights act on **{WHERE[cls.level]}**")
        facts.append(f"normalisation **{cls.normalization}**")
        if default_needs(cls):
            facts.append("needs " + needs_text(default_needs(cls)) + " (with its default settings)")
    elif family == "scalarizer":
        facts.append("weights act on **rewards**")
    if getattr(cls, "moving_target", False):
        facts.append("held-out value relative to the training history (`moving_target`)")
    out = [f"## {name} {{ #{anchor(name)} }}", "", " · ".join(facts), ""]
    if first_in_module:
        out += [f"::: {cls.__module__}", "    options:", "      show_root_heading: false", "      members: false", ""]
    out += [
        f"::: {path}",
        "    options:",
        "      show_root_heading: false",
        "      show_root_toc_entry: false",
        "      members: false",
        "",
        "**Config**",
        "",
        config_table(cls.Config),
        "",
    ]
    return out


def config_table(model: type) -> str:
    fields = getattr(model, "model_fields", None)
    if fields is None:
        raise ValueError(f"{model!r} is not a pydantic model")
    if not fields:
        return "No parameters."
    described = any(info.description for info in fields.values())  # no empty column when none is described
    rows = ["| field | type | default |" + (" description |" if described else ""), "|---" * (3 + described) + "|"]
    for field, info in fields.items():
        kind = f"`{type_name(info.annotation)}`"
        limits = constraints(info.metadata)
        if limits:
            kind += f" ({limits})"
        if info.is_required():
            default = "required"
        else:
            value = info.default_factory() if info.default_factory is not None else info.default
            default = f"`{value!r}`"
        cells = [f"`{field}`", kind, default] + ([(info.description or "").replace("<", "&lt;")] if described else [])
        rows.append(table_row(cells))
    return "\n".join(rows)


def type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return re.sub(r"\b(?:typing|collections\.abc|pathlib)\.", "", text).replace("NoneType", "None")


def constraints(metadata: list[Any]) -> str:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "max_length": "length ≤"}
    parts = []
    for item in metadata:
        for attr, symbol in symbols.items():
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def include_markdown(pattern: str) -> str:
    paths = sorted(Path(p) for p in glob.glob(str(ROOT / pattern)))
    if not paths:
        raise ValueError(f"no file matches {pattern}")
    out = []
    for path in paths:
        relative = path.relative_to(ROOT)
        language = {".yaml": "yaml", ".yml": "yaml", ".py": "python", ".json": "json"}.get(path.suffix, "text")
        out += [f"### `{relative}`", "", f"```{language}", path.read_text().rstrip("\n"), "```", ""]
    return "\n".join(out)


def markdown_file(relative: str) -> str:
    path = ROOT / relative
    if not path.is_file():
        raise ValueError(f"no file {relative}")
    out, fenced = [], False
    for line in path.read_text().splitlines():
        fenced ^= line.startswith("```")
        out.append("#" + line if line.startswith("#") and not fenced else line)
    return "\n".join(out)


def cli_markdown(target: str) -> str:
    import click
    from typer.cli import get_docs_for_click
    from typer.main import get_command

    module, _, attr = target.partition(":")
    app = getattr(importlib.import_module(module), attr or "app")
    command = get_command(app)
    name = app.info.name or module.split(".")[0]
    text = get_docs_for_click(obj=command, ctx=click.Context(command, info_name=name), name=name, indent=1)
    return escape_html_outside_code(text)


def escape_html_outside_code(text: str) -> str:
    """Help texts say ``runs/<time>``: outside code, Markdown would take ``<time>`` for an HTML tag."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            parts = line.split("`")
            parts[::2] = [p.replace("<", "&lt;").replace(">", "&gt;") for p in parts[::2]]
            line = "`".join(parts)
        out.append(line)
    return "\n".join(out)


def first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    return re.sub(r":(?:class|func|meth|mod|attr):`([^`]+)`", r"`\1`", text)


def anchor(name: str) -> str:
    return name.replace("_", "-")
