"""The documentation's claims, checked against the code: the TRL page's field tables and its examples, and the
Python API page's rendered classes and signatures."""

from __future__ import annotations

import ast
import dataclasses
import html
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

import morl
from morl.components import FAMILIES, RecipeError, build, registered
from morl.recipe import Recipe, build_components, parse_recipe

REPO = Path(__file__).resolve().parents[1]
TRL_PAGE = REPO / "docs" / "trl.md"
API_PAGE = REPO / "docs" / "api.md"

# recipe section -> component family; the other sections are pydantic models
COMPONENT_SECTIONS = {
    "rewards": "reward",
    "scalarizer": "scalarizer",
    "advantage": "advantage",
    "algo": "algo",
    "controller": "controller",
    "rollout": "rollout",
}
# what a morl cell may call in Python: `Pipeline(callbacks=...)`, `Pipeline.fit(resume_from=...)`
PYTHON_API = {"Pipeline": morl.Pipeline, "Policy": morl.Policy, "TrainConfig": morl.TrainConfig}
# the TrainingArguments fields a GRPO user sets: each must be on the page, mapped or listed as not in morl
TRAINING_ARGUMENTS_USED = [
    "output_dir", "learning_rate", "weight_decay", "max_grad_norm", "lr_scheduler_type", "warmup_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps", "seed",
    "logging_steps", "save_steps", "save_total_limit", "save_strategy", "eval_strategy", "eval_steps",
    "per_device_eval_batch_size", "resume_from_checkpoint", "push_to_hub", "hub_model_id", "hub_private_repo",
    "hub_token", "report_to", "run_name", "bf16", "fp16", "gradient_checkpointing", "activation_checkpointing",
    "optim", "deepspeed", "fsdp",
]  # fmt: skip


# ---- reading the page ------------------------------------------------------------------------------------------


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def split_row(line: str) -> list[str]:
    """A Markdown table row's cells; a pipe inside a code span is text, not a separator."""
    cells, cell, in_code = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += char
    return [*cells, cell.strip()]


def tables(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every table as (header cells, body rows), skipping fenced code."""
    out, block, fenced = [], [], False
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("|") and not fenced:
            block.append(split_row(line))
            continue
        if block:
            out.append((block[0], block[2:]))
            block = []
    return out


def fenced_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


def block_titled(markdown: str, language: str, title: str) -> str:
    """The fenced block whose first line is the comment ``# {title}``."""
    found = [b for b in fenced_blocks(markdown, language) if b.splitlines()[0] == f"# {title}"]
    assert len(found) == 1, f"docs/trl.md: expected one ```{language} block starting '# {title}', found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def page() -> str:
    return TRL_PAGE.read_text()


@pytest.fixture(scope="module")
def field_tables(page) -> tuple[list[list[str]], list[list[str]]]:
    """(rows mapping a TRL name to morl, rows of TRL names morl does not have)."""
    mapped, missing = [], []
    for header, rows in tables(page):
        if header[:3] == ["TRL", "morl", "notes"]:
            mapped += rows
        elif header[:2] == ["TRL", "what morl does"]:
            missing += rows
    assert mapped and missing, "docs/trl.md: the mapping tables or the 'Not in morl' table are gone"
    return mapped, missing


@pytest.fixture(scope="module")
def trl_names() -> dict[str, str]:
    """Every name a TRL user sets: GRPOConfig fields (own and inherited) and GRPOTrainer arguments -> its origin."""
    pytest.importorskip("trl")
    from transformers import TrainingArguments
    from trl import GRPOConfig, GRPOTrainer

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    names = {
        f.name: "TrainingArguments" if f.name in inherited else "GRPOConfig" for f in dataclasses.fields(GRPOConfig)
    }
    for name in inspect.signature(GRPOTrainer.__init__).parameters:
        if name not in ("self", "args"):
            names.setdefault(name, "GRPOTrainer")
    return names


# ---- resolving morl names against the schema -------------------------------------------------------------------


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``LoraConfig | None`` -> ``LoraConfig``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def components_with(section: str, field: str) -> list[str]:
    """Registered components of the section's family whose config has ``field``."""
    family = COMPONENT_SECTIONS[section]
    return [name for name, cls in registered(family).items() if field in cls.Config.model_fields]


def resolve_path(path: str) -> None:
    """``train.lr``, ``policy.lora.r``, ``algo.clip_high``: a field of the recipe's schema, or AssertionError."""
    top, *rest = path.split(".")
    assert top in Recipe.model_fields, f"{path}: the recipe has no section {top!r} ({', '.join(Recipe.model_fields)})"
    if top in COMPONENT_SECTIONS:
        assert len(rest) == 1, f"{path}: a component's field is one level below its section"
        assert components_with(top, rest[0]), f"{path}: no registered {COMPONENT_SECTIONS[top]} has a field {rest[0]!r}"
        return
    model = _model_of(Recipe.model_fields[top].annotation)
    for i, part in enumerate(rest):
        assert model is not None and part in model.model_fields, f"{path}: no field {part!r}"
        model = _model_of(model.model_fields[part].annotation) if i < len(rest) - 1 else None


def check_component_spec(section: str, spec: Any) -> None:
    """A section's value as a recipe writes it: a short name, ``{name: ..., **params}``, or a list of rewards.

    Import paths (``my_rewards.correct_answer``) name the user's code and are not resolved here."""
    if section == "rewards":
        assert isinstance(spec, list), f"rewards: a list, got {spec!r}"
        for item in spec:
            check_component_spec("reward", item)
        return
    family = COMPONENT_SECTIONS.get(section, section)
    if isinstance(spec, str) and "." in spec:
        return
    try:
        build(family, spec)
    except (RecipeError, ValueError) as err:
        raise AssertionError(f"{section}: {spec!r} does not build: {err}") from None


def check_setting(key: str, value: Any) -> None:
    """``policy.dtype: bfloat16`` or ``algo.importance_correction: none``: the path exists and takes the value."""
    top, *rest = key.split(".")
    if not rest and top in COMPONENT_SECTIONS:
        check_component_spec(top, value)
        return
    resolve_path(key)
    if top in COMPONENT_SECTIONS:
        names = components_with(top, rest[0])
        errors = []
        for name in names:
            try:
                build(COMPONENT_SECTIONS[top], {"name": name, rest[0]: value})
                return
            except (RecipeError, ValueError) as err:
                errors.append(str(err))
        raise AssertionError(f"{key}: {value!r} is refused by every component with that field: {errors}")
    node: Any = value
    for part in reversed(rest):
        node = {part: node}
    try:
        parse_recipe({top: node})
    except RecipeError as err:
        raise AssertionError(f"{key}: {value!r} is refused: {err}") from None


def fit_options() -> set[str]:
    import typer

    from morl.cli import app

    fit = typer.main.get_command(app).commands["fit"]
    return {opt for param in fit.params for opt in param.opts}


def check_morl_span(span: str, strict: bool = True) -> bool:
    """Check one code span of a morl cell; False for a span that names no setting (a value such as ``cosine``).

    Not ``strict`` (the notes): a dotted name outside the recipe's sections (``metrics.jsonl``) is prose."""
    if span.startswith("--"):
        assert span in fit_options(), f"`{span}`: not an option of `morl fit`"
        return True
    call = re.fullmatch(r"([A-Z]\w*)((?:\.\w+)*)\((\w+)=\.\.\.\)", span)
    if call:
        obj = PYTHON_API[call.group(1)]
        for attr in filter(None, call.group(2).split(".")):
            obj = getattr(obj, attr)
        assert call.group(3) in inspect.signature(obj).parameters, f"`{span}`: no parameter {call.group(3)!r}"
        return True
    if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", span):
        if not strict and span.split(".")[0] not in Recipe.model_fields:
            return False
        resolve_path(span)
        return True
    if re.fullmatch(r"[a-z_.]+: .+", span):
        setting = yaml.safe_load(span)
        ((key, value),) = setting.items()
        if key.split(".")[0] in Recipe.model_fields:
            check_setting(key, None if value == "..." else value)
            return True
    return False


def morl_schema_names() -> set[str]:
    """Every setting name morl has: recipe fields at any depth, component config fields, Pipeline arguments."""
    names: set[str] = set()

    def walk(model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            names.add(name)
            inner = _model_of(info.annotation)
            if inner is not None:
                walk(inner)

    walk(Recipe)
    for family in FAMILIES:
        for cls in registered(family).values():
            walk(cls.Config)
    names |= set(inspect.signature(morl.Pipeline.__init__).parameters)
    names |= set(inspect.signature(morl.Pipeline.fit).parameters)
    return names


# ---- the field tables --------------------------------------------------------------------------------------------


def test_every_trl_name_on_the_page_exists_in_trl(field_tables, trl_names):
    mapped, missing = field_tables
    for row in mapped + missing:
        names = code_spans(row[0])
        assert names, f"docs/trl.md: a row names no TRL field: {row}"
        unknown = [n for n in names if n not in trl_names]
        assert not unknown, f"docs/trl.md names {unknown}, not fields of trl.GRPOConfig nor GRPOTrainer arguments"


def test_every_grpo_field_is_mapped_or_listed_as_missing_once(field_tables, trl_names):
    mapped, missing = field_tables
    on_page = [n for row in mapped + missing for n in code_spans(row[0])]
    repeated = sorted({n for n in on_page if on_page.count(n) > 1})
    assert not repeated, f"docs/trl.md: in more than one row: {repeated}"
    wanted = [n for n, origin in trl_names.items() if origin in ("GRPOConfig", "GRPOTrainer")]
    wanted += TRAINING_ARGUMENTS_USED
    absent = sorted(set(wanted) - set(on_page))
    assert not absent, f"docs/trl.md: these TRL settings are neither mapped nor listed under 'Not in morl': {absent}"


def test_every_morl_setting_on_the_page_exists(field_tables):
    mapped, missing = field_tables
    for row in mapped:
        checked = [span for span in code_spans(row[1]) if check_morl_span(span)]
        assert checked, f"docs/trl.md: {row[0]} maps to no morl setting the test can check: {row[1]!r}"
    for row in mapped + missing:  # settings named in the notes and in the 'instead' column exist too
        for span in code_spans(row[-1]):
            check_morl_span(span, strict=False)


def test_what_the_page_says_morl_lacks_is_absent(field_tables):
    _, missing = field_tables
    schema = morl_schema_names()
    present = sorted({n for row in missing for n in code_spans(row[0]) if n in schema})
    assert not present, f"docs/trl.md lists {present} as not in morl, but morl has settings of these names"


def test_the_loss_types_the_page_names():
    from morl.algos.loss import LossType

    assert set(typing.get_args(LossType)) == {"grpo", "bnpo", "dapo", "dr_grpo"}
    for missing in ("cispo", "sapo", "luspo", "vespo"):
        with pytest.raises(RecipeError):
            build("algo", {"name": "grpo", "loss_type": missing})


def test_the_checker_fails_on_wrong_names():
    """The resolver behind the tests above refuses what does not exist (so a renamed field fails them)."""
    for span in ("train.learning_rate", "algo.epsilon", "policy.lora.rank", "rollout.vllm_mode", "--resume-from"):
        with pytest.raises(AssertionError):
            check_morl_span(span)
    for span in ("controller: {name: fixed, weight: [1]}", "policy.dtype: bf16", "algo.loss_type: cispo"):
        with pytest.raises(AssertionError):
            check_morl_span(span)
    assert check_morl_span("algo.clip_high") and check_morl_span("rollout: vllm") and not check_morl_span("cosine")


# ---- the examples ------------------------------------------------------------------------------------------------


@pytest.fixture
def rewards_module(page, tmp_path, monkeypatch):
    """The page's ``my_rewards.py``, written to a folder on ``sys.path``."""
    (tmp_path / "my_rewards.py").write_text(block_titled(page, "python", "my_rewards.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    return importlib.import_module("my_rewards")


def test_every_yaml_block_is_a_valid_recipe(page, rewards_module):
    blocks = fenced_blocks(page, "yaml")
    assert len(blocks) >= 2
    for block in blocks:
        recipe = parse_recipe(yaml.safe_load(block), source="docs/trl.md", folder=Path(rewards_module.__file__).parent)
        build_components(recipe)


def test_trl_reward_functions_run_unchanged(rewards_module):
    from morl.rewards import StepInfo, score_rewards

    fns = [rewards_module.correct_answer, rewards_module.boxed_format, rewards_module.length_penalty]
    completions = ["so \\boxed{4}", "\\boxed{3} or \\boxed{5}"]
    state = StepInfo(global_step=50, max_steps=100)
    plain, _ = score_rewards(
        fns, ["2+2?", "1+2?"], completions, {"answer": ["4", "3"]},
        training=True, completion_ids=[[1] * 256, [1] * 512], trainer_state=state,
    )  # fmt: skip
    assert plain.tolist() == [[1.0, 1.0, -0.125], [0.0, 0.0, -0.25]]
    # conversational rows (a messages column): completions arrive as [{"role": "assistant", "content": ...}]
    chat = [[{"role": "user", "content": "2+2?"}], [{"role": "user", "content": "1+2?"}]]
    seen = []

    def spy(prompts, completions, **kwargs):
        seen.append((prompts, completions))
        return [0.0] * len(completions)

    conversational, _ = score_rewards(
        [*fns, spy], ["2+2?", "1+2?"], completions, {"answer": ["4", "3"], "messages": chat},
        training=True, completion_ids=[[1] * 256, [1] * 512], trainer_state=state,
    )  # fmt: skip
    assert conversational[:, :3].tolist() == plain.tolist()
    assert seen == [(chat, [[{"role": "assistant", "content": c}] for c in completions])]


def test_conversational_rows_load_as_messages(tmp_path):
    """TRL's conversational format (a prompt column of chat messages) loads with the messages kept, as the page says."""
    from morl.data import load_examples

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"prompt": chat, "answer": "2"}) + "\n")
    (row,) = load_examples(str(tmp_path / "chat.jsonl"))
    assert row["messages"] == chat and row["prompt"] == "1+1?"


def _literal_call(tree: ast.AST, name: str) -> tuple[list[Any], dict[str, ast.expr]]:
    """The one call of ``name`` (``GRPOConfig``, ``Policy.from_pretrained``): literal positional args, keyword nodes."""
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == name]
    assert len(calls) == 1, f"expected one call of {name}, found {len(calls)}"
    return [ast.literal_eval(a) for a in calls[0].args], {k.arg: k.value for k in calls[0].keywords}


def _literals(keywords: dict[str, ast.expr]) -> dict[str, Any]:
    return {key: ast.literal_eval(node) for key, node in keywords.items()}


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")  # TRL's GRPO default
def test_the_side_by_side_example_is_one_run(page, field_tables, trl_names, rewards_module):
    """The TRL script, the recipe and the Python version train the same thing, by the page's own translation."""
    from trl import GRPOConfig

    from morl.policy import PolicyConfig

    mapped, _ = field_tables
    documented = {n for row in mapped for n in code_spans(row[0])}

    # TRL: every argument is a real one and is in the mapping tables
    trl_tree = ast.parse(block_titled(page, "python", "TRL: train.py"))
    _, config_nodes = _literal_call(trl_tree, "GRPOConfig")
    _, trainer_nodes = _literal_call(trl_tree, "GRPOTrainer")
    for name in [*config_nodes, *trainer_nodes]:
        assert name in trl_names or name == "args", f"the TRL example sets {name!r}, which TRL does not have"
        assert name in documented or name == "args", f"the TRL example sets {name!r}; the tables do not map it"
    given = _literals(config_nodes)
    # constructed on the CPU (bf16 needs a GPU): TRL derives its generation batch and steps per generation
    trl = GRPOConfig(**{**given, "bf16": False, "use_cpu": True})
    _, lora = _literal_call(trl_tree, "LoraConfig")
    lora = _literals(lora)
    model = ast.literal_eval(trainer_nodes["model"])
    reward_funcs = [ast.unparse(n) for n in trainer_nodes["reward_funcs"].elts]
    prompt_format = next(
        ast.literal_eval(n.value)
        for n in ast.walk(trl_tree)
        if isinstance(n, ast.Assign) and n.targets[0].id == "PROMPT"
    )
    (source,), split_node = _literal_call(trl_tree, "load_dataset")
    split = ast.literal_eval(split_node["split"])

    # the recipe
    recipe = parse_recipe(
        yaml.safe_load(block_titled(page, "yaml", "morl: recipe.yaml")),
        folder=Path(rewards_module.__file__).parent,
    )
    parts = build_components(recipe)
    algo, rollout, controller = parts["algo"].config, parts["rollout"].config, parts["controller"].config
    train = recipe.train

    # the Python version builds the same recipe
    py_tree = ast.parse(block_titled(page, "python", "morl: train.py"))
    (model_py,), policy_kwargs = _literal_call(py_tree, "Policy.from_pretrained")
    assert PolicyConfig(model=model_py, **_literals(policy_kwargs)) == recipe.policy
    _, pipeline = _literal_call(py_tree, "Pipeline")
    for section in ("algo", "rollout", "controller"):
        built = build(section, ast.literal_eval(pipeline[section]))
        if section == "algo":  # as build_parts does: the sampling settings' one home is the rollout
            built.follow_rollout(rollout.temperature, rollout.max_new_tokens)
        assert built.config == parts[section].config, section
    _, config_kwargs = _literal_call(py_tree, "TrainConfig")
    assert morl.TrainConfig(**_literals(config_kwargs)) == train
    assert [ast.unparse(n) for n in pipeline["rewards"].elts] == reward_funcs
    (source_py, split_py), data_kwargs = _literal_call(py_tree, "load_examples")
    assert (source_py, split_py, ast.literal_eval(data_kwargs["prompt_template"])) == (
        recipe.data.train,
        recipe.data.train_split,
        recipe.data.prompt_template,
    )

    # TRL -> morl, as the page translates it (one process)
    updates_per_step = algo.epochs * algo.minibatches
    assert train.group_size == trl.num_generations
    assert train.prompts_per_step * train.group_size == trl.generation_batch_size
    assert algo.minibatches == trl.steps_per_generation // trl.gradient_accumulation_steps
    assert algo.micro_batch_size == trl.per_device_train_batch_size
    assert algo.epochs == trl.num_iterations
    assert train.steps * updates_per_step == trl.max_steps
    assert train.checkpoint_every * updates_per_step == trl.save_steps
    assert (train.lr, train.lr_scheduler_type, train.warmup_steps, train.seed) == (
        trl.learning_rate,
        trl.lr_scheduler_type.value,
        trl.warmup_steps,
        trl.seed,
    )
    assert train.output_dir == trl.output_dir and set(trl.report_to) <= set(train.loggers)
    assert rollout.max_new_tokens == trl.max_completion_length
    assert rollout.temperature == algo.temperature == trl.temperature
    assert (algo.loss_type, algo.clip_low, algo.clip_high, algo.kl_coef) == (
        trl.loss_type,
        trl.epsilon,
        trl.epsilon_high,
        trl.beta,
    )
    assert list(controller.weights) == trl.reward_weights
    assert (parts["rollout"].name == "vllm") == trl.use_vllm
    assert rollout.gpu_memory_utilization == trl.vllm_gpu_memory_utilization
    assert recipe.policy.model == model
    assert recipe.policy.dtype == ("bfloat16" if given["bf16"] else "float32")
    assert recipe.policy.gradient_checkpointing == trl.gradient_checkpointing
    assert (recipe.policy.lora.r, recipe.policy.lora.alpha, recipe.policy.lora.target_modules) == (
        lora["r"],
        lora["lora_alpha"],
        lora["target_modules"],
    )
    assert [r.rpartition(".")[2] for r in recipe.rewards] == reward_funcs
    assert (recipe.data.train, recipe.data.train_split) == (source, split)
    assert recipe.data.prompt_template.replace("{prompt}", "P") == prompt_format.format(problem="P")


# ---- the Python API page -------------------------------------------------------------------------------------------


def api_targets() -> list[tuple[str, bool]]:
    """``(target, shows a heading)`` for every ``::: target`` of docs/api.md."""
    text = API_PAGE.read_text()
    out = []
    for match in re.finditer(r"^::: (\S+)\n((?:    .*\n)*)", text, re.MULTILINE):
        out.append((match.group(1), "show_root_heading: false" not in match.group(2)))
    return out


def _import_target(target: str) -> Any:
    module, _, attr = target.rpartition(".")
    try:
        return importlib.import_module(target)
    except ImportError:
        return getattr(importlib.import_module(module), attr)


def test_every_api_page_target_imports():
    targets = api_targets()
    assert len(targets) > 30
    for target, _ in targets:
        _import_target(target)


def test_the_api_page_renders_names_and_signatures(tmp_path):
    """Build the site (about 10 s) and read the API page as text: every object has its heading, callables their
    signatures, ``TrainConfig`` its fields."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    page = (site / "api" / "index.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    for target, heading in api_targets():
        if heading:
            assert re.search(rf'<h\d id="{re.escape(target)}"', page), f"api page: no heading for {target}"
    for signature in ("Pipeline(", "build_parts(", "fit(", "load_recipe(", "read_metrics(", "Evaluator(", "build("):
        assert signature in text, f"api page: no signature {signature}...)"
    for field in morl.TrainConfig.model_fields:
        assert field in text, f"api page: TrainConfig's field {field} is not shown"
    assert (site / "trl" / "index.html").exists()


def test_the_any_trainer_page_runs_as_written(capsys):
    """docs/concepts/any-trainer.md: a controller called outside morl's trainer, as another training loop would."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "concepts" / "any-trainer.md").read_text()
    (block,) = re.findall(r"^```python\n(.*?)^```", page, re.MULTILINE | re.DOTALL)
    exec(compile(block, "any-trainer.md", "exec"), {})
    fixed, lagrangian = capsys.readouterr().out.strip().splitlines()
    # reward level: s = 0.5 r_acc + 0.5 r_brev -> group 1 flat (0.5, 0.5), group 2 (1, 0) normalised to ±0.707
    assert fixed.startswith("fixed reward [0.0, 0.0, 0.707, -0.707]")
    # advantage level: each objective normalised in its group (±0.707), then A_acc + λ A_brev with the dual
    # λ = dual_lr (0.01) × (target 0.9 - mean brevity 0.5) = 0.004 after before_update: 0.707 × (1 ∓ 0.004)
    assert lagrangian.startswith("lagrangian advantage [0.704, -0.704, 0.71, -0.71]")
