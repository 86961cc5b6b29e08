"""Hostile inputs across the CLI: every bad input gets a short message naming what is wrong, an exit code of 1 or 2,
no Python traceback, in bounded time, and no existing run directory loses a byte.

One table, one row a case: the files to make in a scratch folder, the command line (``{run}`` is a finished run,
``{tmp}`` the scratch folder, ``{model}`` the tiny model), the exit code, and a fragment the message must contain. No
file a case made before the command changes either.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from morl.cli import app

GOOD = """
policy: {model: {model}}
data: {train: tinymath, eval: tinymath, train_size: 16, eval_size: 2}
rewards: [accuracy, conciseness, clarity]
controller: {name: ctwa, targets: [0.45, 0.0, 0.0]}
rollout: {name: transformers, max_new_tokens: 6}
train: {steps: 1, prompts_per_step: 2, group_size: 2, eval_every: 0, progress: false, threads: 1, output_dir: {out}}
"""

FIFO = "<a named pipe>"  # a file's content: make a named pipe there (read, it waits for a writer forever)
COPY_OF_RUN = "<a copy of the finished run>"  # a file's content: copy the finished run there
NESTED = "[" * 10_000 + "]" * 10_000  # 10,000 lists in one another: Python's parser stack runs out far sooner
USERS_FOLDER = {"mine/model/my_weights.txt": "my weights\n", "mine/data/train.jsonl": '{"prompt": "1+1"}\n'}
DAMAGED_MANIFEST = {"dmg": COPY_OF_RUN, "dmg/manifest.json": b"\xc0\xff\x00\x81 not a manifest"}

# (id, files to write in {tmp}: name -> text, bytes, FIFO or COPY_OF_RUN, arguments, exit code, fragment of the message)
CASES = [
    # ---- recipes -----------------------------------------------------------------------------------------------
    ("recipe-missing", {}, "fit {tmp}/nope.yaml", 2, "recipe not found"),
    ("recipe-not-yaml", {"r.yaml": "a: [1,"}, "fit {tmp}/r.yaml", 2, "not valid YAML"),
    ("recipe-a-list", {"r.yaml": "- 1\n- 2\n"}, "fit {tmp}/r.yaml", 2, "mapping"),
    ("recipe-unknown-section", {"r.yaml": "trian: {}\n"}, "fit {tmp}/r.yaml", 2, "trian"),
    ("recipe-unknown-train-field", {"r.yaml": "train: {stpes: 3}\n"}, "validate {tmp}/r.yaml", 2, "stpes"),
    ("steps-not-a-number", {"r.yaml": "train: {steps: many}\n"}, "validate {tmp}/r.yaml", 2, "steps"),
    ("steps-negative", {"r.yaml": "train: {steps: -1}\n"}, "validate {tmp}/r.yaml", 2, "steps"),
    ("group-size-one", {"r.yaml": "train: {group_size: 1}\n"}, "validate {tmp}/r.yaml", 2, "group_size"),
    ("lr-zero", {"r.yaml": "train: {lr: 0}\n"}, "validate {tmp}/r.yaml", 2, "lr"),
    ("unknown-controller", {"r.yaml": "controller: ctwaa\n"}, "validate {tmp}/r.yaml", 2, "ctwaa"),
    ("unknown-reward", {"r.yaml": "rewards: [accuracy, politeness]\n"}, "validate {tmp}/r.yaml", 2, "politeness"),
    ("no-rewards", {"r.yaml": "rewards: []\n"}, "validate {tmp}/r.yaml", 2, "rewards"),
    ("duplicate-rewards", {"r.yaml": "rewards: [accuracy, accuracy]\n"}, "validate {tmp}/r.yaml", 2, "unique"),
    ("import-path-missing", {"r.yaml": "rewards: [no_such_pkg.X]\n"}, "validate {tmp}/r.yaml", 2, "no_such_pkg"),
    ("unknown-controller-field", {"r.yaml": "controller: {name: ctwa, lrr: 1}\n"}, "validate {tmp}/r.yaml", 2, "lrr"),
    (
        "ctwa-wrong-target-count",
        {"r.yaml": "controller: {name: ctwa, targets: [0.1]}\n"},
        "validate {tmp}/r.yaml",
        2,
        "targets",
    ),
    # what validate must not call ok when fit cannot run it (a crash, an overflow, memory exhausted)
    ("threads-100000", {}, "validate cookbook/recipes/quickstart.yaml --set train.threads=100000", 2, "threads"),
    ("group-size-1e5", {}, "validate cookbook/recipes/quickstart.yaml --set train.group_size=100000", 2, "group_size"),
    (
        "reward-timeout-1e10",
        {},
        "validate cookbook/recipes/quickstart.yaml --set train.reward_timeout_s=1e10",
        2,
        "reward_timeout_s",
    ),
    ("empty-output-dir", {}, "validate cookbook/recipes/quickstart.yaml --set train.output_dir=''", 2, "output_dir"),
    ("ctwa-lr-1e308", {}, "validate cookbook/recipes/quickstart.yaml --set controller.lr=1e308", 2, "lr"),
    ("ctwa-u-max-negative", {}, "validate cookbook/recipes/quickstart.yaml --set controller.u_max=-5", 2, "u_max"),
    (
        "ctwa-unknown-objective",
        {"r.yaml": "controller: {name: ctwa, targets: {speed: 0.1}}\n"},
        "validate {tmp}/r.yaml",
        2,
        "speed",
    ),
    (
        "lagrangian-unknown-primary",
        {"r.yaml": "controller: {name: lagrangian, primary: speed}\n"},
        "validate {tmp}/r.yaml",
        2,
        "speed",
    ),
    (
        "ignored-scalarizer",
        {"r.yaml": "scalarizer: tchebycheff\ncontroller: mgda\n"},
        "validate {tmp}/r.yaml",
        2,
        "would be ignored",
    ),
    (
        "temperature-mismatch",
        {"r.yaml": "rollout: {name: transformers, temperature: 0.7}\nalgo: {name: grpo, temperature: 1.0}\n"},
        "validate {tmp}/r.yaml",
        2,
        "temperature",
    ),
    ("unknown-loss-type", {"r.yaml": "algo: {name: grpo, loss_type: ppo}\n"}, "validate {tmp}/r.yaml", 2, "loss_type"),
    ("unknown-algo", {"r.yaml": "algo: ppo\n"}, "validate {tmp}/r.yaml", 2, "ppo"),
    (
        "kl-in-reward-advantage-level",
        {"r.yaml": "algo: {name: grpo, kl_coef: 0.1, kl_in: reward}\ncontroller: gdpo\n"},
        "validate {tmp}/r.yaml",
        2,
        "kl_in",
    ),
    ("set-without-equals", {}, "validate cookbook/recipes/quickstart.yaml --set train.steps", 2, "key.path=value"),
    ("set-bad-index", {}, "validate cookbook/recipes/quickstart.yaml --set rewards.9.x=1", 2, "index"),
    ("set-into-a-value", {}, "validate cookbook/recipes/quickstart.yaml --set train.steps.x=1", 2, "not a section"),
    ("set-unknown-field", {}, "validate cookbook/recipes/quickstart.yaml --set train.stepz=1", 2, "stepz"),
    (
        "loss-recipe-dr-grpo-bad-length",
        {"r.yaml": "algo: {name: grpo, loss_type: dr_grpo, max_completion_length: 0}\n"},
        "validate {tmp}/r.yaml",
        2,
        "max_completion_length",
    ),
    ("lora-bad-rank", {"r.yaml": "policy: {lora: {r: 0}}\n"}, "validate {tmp}/r.yaml", 2, "lora"),
    ("threads-zero", {"r.yaml": "train: {threads: 0}\n"}, "validate {tmp}/r.yaml", 2, "threads"),
    (
        "dynamic-sampling-rounds-zero",
        {"r.yaml": "train: {dynamic_sampling: true, dynamic_sampling_rounds: 0}\n"},
        "validate {tmp}/r.yaml",
        2,
        "dynamic_sampling_rounds",
    ),
    (
        "scheduler-unknown",
        {"r.yaml": "train: {lr_scheduler_type: exotic}\n"},
        "validate {tmp}/r.yaml",
        2,
        "lr_scheduler_type",
    ),
    ("lr-infinite", {"r.yaml": "train: {lr: .inf}\n"}, "validate {tmp}/r.yaml", 2, "lr"),
    (
        "fixed-weights-all-zero",
        {"r.yaml": "controller: {name: fixed, weights: [0, 0, 0]}\n"},
        "validate {tmp}/r.yaml",
        2,
        "weights",
    ),
    (
        "fixed-weights-nan",
        {"r.yaml": "controller: {name: fixed, weights: [.nan, 1, 1]}\n"},
        "validate {tmp}/r.yaml",
        2,
        "weights",
    ),
    (
        "ctwa-target-nan",
        {"r.yaml": "controller: {name: ctwa, targets: [.nan, 0, 0]}\n"},
        "validate {tmp}/r.yaml",
        2,
        "targets",
    ),
    ("function-as-scalarizer", {"r.yaml": "scalarizer: os.path.join\n"}, "validate {tmp}/r.yaml", 2, "scalarizer"),
    ("int-as-reward", {"r.yaml": "rewards: [accuracy, 3]\n"}, "validate {tmp}/r.yaml", 2, "rewards"),
    (
        "controller-class-as-reward",
        {"r.yaml": "rewards: [morl.controllers.CTWA]\n"},
        "validate {tmp}/r.yaml",
        2,
        "rewards",
    ),
    ("missing-logger-package", {"r.yaml": "train: {loggers: [jsonl, wandb]}\n"}, "validate {tmp}/r.yaml", 2, "wandb"),
    (
        "missing-logger-package-fit",
        {"r.yaml": "train: {loggers: [wandb]}\npolicy: {model: /no/such/model}\n"},
        "fit {tmp}/r.yaml",
        2,
        "wandb",
    ),
    ("recipe-a-directory", {"rdir/.keep": ""}, "fit {tmp}/rdir", 2, "is a directory"),
    ("recipe-a-directory-validate", {"rdir/.keep": ""}, "validate {tmp}/rdir", 2, "is a directory"),
    ("recipe-a-fifo", {"r.yaml": FIFO}, "fit {tmp}/r.yaml", 2, "named pipe"),
    ("recipe-a-fifo-validate", {"r.yaml": FIFO}, "validate {tmp}/r.yaml", 2, "named pipe"),
    ("recipe-dev-zero", {}, "validate /dev/zero", 2, "character device"),
    ("recipe-dev-zero-fit", {}, "fit /dev/zero", 2, "character device"),
    ("recipe-over-10-mb", {"r.yaml": "# " + "x" * 10 * 2**20 + "\n"}, "validate {tmp}/r.yaml", 2, "10.0 MB"),
    ("recipe-nested-10000-deep", {"r.yaml": f"name: {NESTED}\n"}, "validate {tmp}/r.yaml", 2, "nested too deeply"),
    (
        "recipe-nested-100-deep",
        {"r.yaml": "controller: {name: fixed, weights: " + "[" * 100 + "]" * 100 + "}\n"},
        "fit {tmp}/r.yaml",
        2,
        "nests more than 50 levels",
    ),
    ("set-nested-10000-deep", {}, "validate cookbook/recipes/quickstart.yaml --set name=" + NESTED, 2, "nests too"),
    ("seed-negative", {"r.yaml": GOOD}, "validate {tmp}/r.yaml --set train.seed=-1", 2, "train.seed"),
    ("seed-negative-fit", {"r.yaml": GOOD}, "fit {tmp}/r.yaml --set train.seed=-1", 2, "train.seed"),
    ("seed-2-to-the-70", {"r.yaml": GOOD}, f"fit {{tmp}}/r.yaml --set train.seed={2**70}", 2, "train.seed"),
    ("seed-2-to-the-32", {"r.yaml": GOOD}, f"validate {{tmp}}/r.yaml --set train.seed={2**32}", 2, "train.seed"),
    ("seed-as-text-2**70", {"r.yaml": GOOD}, "fit {tmp}/r.yaml --set train.seed=2**70", 2, "train.seed"),
    ("compare-negative-seed", {"r.yaml": GOOD}, "compare {tmp}/r.yaml --seeds 0,-1 --out {tmp}/cmp", 2, "--seeds"),
    # ---- the run directory ---------------------------------------------------------------------------------------
    (
        "overwrite-a-users-folder",
        {"r.yaml": GOOD, **USERS_FOLDER},
        "fit {tmp}/r.yaml --output-dir {tmp}/mine --overwrite",
        2,
        "not a morl run",
    ),
    (
        "fit-into-a-users-folder",
        {"r.yaml": GOOD, **USERS_FOLDER},
        "fit {tmp}/r.yaml --output-dir {tmp}/mine",
        2,
        "data/",
    ),
    (
        "overwrite-a-damaged-manifest",
        {"r.yaml": GOOD, **DAMAGED_MANIFEST},
        "fit {tmp}/r.yaml --output-dir {tmp}/dmg --overwrite",
        2,
        "removes nothing",
    ),
    (
        "resume-a-damaged-manifest",
        {"r.yaml": GOOD, **DAMAGED_MANIFEST},
        "fit {tmp}/r.yaml --resume {tmp}/dmg --set train.steps=2",
        2,
        "dmg/manifest.json",
    ),
    (
        "resume-below-the-step-reached",
        {"r.yaml": GOOD},
        "fit {tmp}/r.yaml --resume {run} --set train.steps=0",
        2,
        "already reached step 1",
    ),
    ("fit-into-a-finished-run", {"r.yaml": GOOD}, "fit {tmp}/r.yaml --output-dir {run}", 2, "--resume"),
    ("output-dir-is-a-file", {"r.yaml": GOOD, "afile": "x"}, "fit {tmp}/r.yaml --output-dir {tmp}/afile", 2, "afile"),
    (
        "output-dir-under-a-file",
        {"r.yaml": GOOD, "afile": "x"},
        "fit {tmp}/r.yaml --output-dir {tmp}/afile/run",
        2,
        "afile",
    ),
    ("resume-missing", {"r.yaml": GOOD}, "fit {tmp}/r.yaml --resume {tmp}/gone", 2, "does not exist"),
    (
        "resume-empty-folder",
        {"r.yaml": GOOD, "empty/.keep": ""},
        "fit {tmp}/r.yaml --resume {tmp}/empty",
        2,
        "no complete checkpoint",
    ),
    ("resume-changed-lr", {"r.yaml": GOOD}, "fit {tmp}/r.yaml --resume {run} --set train.lr=0.5", 2, "train.lr"),
    (
        "resume-changed-controller",
        {"r.yaml": GOOD},
        "fit {tmp}/r.yaml --resume {run} --set controller=fixed",
        2,
        "controller",
    ),
    (
        "resume-changed-group-size",
        {"r.yaml": GOOD},
        "fit {tmp}/r.yaml --resume {run} --set train.group_size=4",
        2,
        "train.group_size",
    ),
    (
        "resume-unknown-accept",
        {"r.yaml": GOOD},
        "fit {tmp}/r.yaml --resume {run} --set train.lr=0.5 --accept-change train.lrr",
        2,
        "train.lrr",
    ),
    # ---- data and models -----------------------------------------------------------------------------------------
    ("data-file-missing", {"r.yaml": "data: {train: /no/such.jsonl}\n"}, "fit {tmp}/r.yaml", 2, "/no/such.jsonl"),
    (
        "model-path-missing",
        {"r.yaml": "policy: {model: /no/such/model}\ntrain: {output_dir: {tmp}/m}\n"},
        "fit {tmp}/r.yaml",
        2,
        "/no/such/model",
    ),
    (
        "model-dir-empty",
        {"r.yaml": "policy: {model: {tmp}/emptymodel}\ntrain: {output_dir: {tmp}/m}\n", "emptymodel/.keep": ""},
        "fit {tmp}/r.yaml",
        2,
        "emptymodel",
    ),
    (
        "prompt-over-the-context",
        {
            "long.jsonl": '{"prompt": "' + "1+" * 200 + '", "answer": "1"}\n',
            "r.yaml": "data: {train: {tmp}/long.jsonl, eval: null}\ntrain: {output_dir: {tmp}/o}\n",
        },
        "fit {tmp}/r.yaml",
        2,
        "context",
    ),
    (
        "data-file-a-fifo",
        {"d.jsonl": FIFO, "r.yaml": "policy: {model: {model}}\ndata: {train: {tmp}/d.jsonl, eval: null}\n"},
        "fit {tmp}/r.yaml --output-dir {tmp}/o",
        2,
        "not a regular file",
    ),
    # ---- eval ------------------------------------------------------------------------------------------------------
    ("eval-missing-checkpoint", {"r.yaml": GOOD}, "eval {tmp}/r.yaml --checkpoint {tmp}/gone", 2, "gone"),
    (
        "eval-empty-folder",
        {"r.yaml": GOOD, "empty/.keep": ""},
        "eval {tmp}/r.yaml --checkpoint {tmp}/empty",
        2,
        "empty",
    ),
    ("eval-without-eval-data", {"r.yaml": "data: {eval: null}\n"}, "eval {tmp}/r.yaml --checkpoint {run}", 2, "eval"),
    # ---- score -----------------------------------------------------------------------------------------------------
    ("score-missing-file", {}, "score {tmp}/nope.jsonl", 2, "nope.jsonl"),
    ("score-bad-json", {"c.jsonl": '{"prompt": "p", "completion": '}, "score {tmp}/c.jsonl", 2, "c.jsonl"),
    ("score-no-completion", {"c.jsonl": '{"prompt": "p"}\n'}, "score {tmp}/c.jsonl", 2, "completion"),
    (
        "score-completion-not-text",
        {"c.jsonl": '{"prompt": "p", "completion": 3}\n'},
        "score {tmp}/c.jsonl",
        2,
        "completion",
    ),
    (
        "score-non-utf8",
        {"c.jsonl": b'{"prompt": "p", "completion": "\xff\xfe"}\n'},
        "score {tmp}/c.jsonl",
        2,
        "c.jsonl",
    ),
    (
        "score-out-is-a-dir",
        {"c.jsonl": '{"prompt": "p", "completion": "c", "answer": "1"}\n', "outdir/.keep": ""},
        "score {tmp}/c.jsonl --out {tmp}/outdir",
        2,
        "outdir",
    ),
    (
        "score-duplicate-rewards",
        {"c.jsonl": '{"prompt": "p", "completion": "c"}\n'},
        "score {tmp}/c.jsonl --rewards clarity,clarity",
        2,
        "clarity",
    ),
    (
        "score-unknown-reward",
        {"c.jsonl": '{"prompt": "p", "completion": "c"}\n'},
        "score {tmp}/c.jsonl --rewards politeness",
        2,
        "politeness",
    ),
    ("score-a-fifo", {"c.jsonl": FIFO}, "score {tmp}/c.jsonl", 2, "named pipe"),
    ("score-dev-zero", {}, "score /dev/zero", 2, "character device"),
    ("score-a-directory", {"d/.keep": ""}, "score {tmp}/d", 2, "is a directory"),
    # ---- plot and compare -------------------------------------------------------------------------------------------
    ("plot-missing-run", {}, "plot {tmp}/gone", 2, "gone"),
    ("plot-out-is-a-file", {"afile": "x"}, "plot {run} --out {tmp}/afile", 2, "afile is a file"),
    ("plot-not-a-run", {"notrun/.keep": ""}, "plot {tmp}/notrun", 2, "manifest.json"),
    (
        "compare-unknown-method",
        {"r.yaml": GOOD},
        "compare {tmp}/r.yaml --methods linear,warp --out {tmp}/cmp",
        2,
        "warp",
    ),
    ("compare-bad-seeds", {"r.yaml": GOOD}, "compare {tmp}/r.yaml --seeds one,two --out {tmp}/cmp", 2, "seeds"),
    ("compare-missing-recipe", {}, "compare {tmp}/nope.yaml --out {tmp}/cmp", 2, "nope.yaml"),
]


def _fill(text: str, values: dict[str, Path]) -> str:
    """The placeholders ``{tmp}``, ``{run}``, ``{model}``, ``{out}`` (YAML's own braces are left alone)."""
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """A finished 1-step run that every case may point at and none may change."""
    folder = tmp_path_factory.mktemp("finished")
    recipe = folder / "r.yaml"
    recipe.write_text(_fill(GOOD, {"model": tiny_model_dir, "out": folder / "run"}))
    result = CliRunner().invoke(app, ["fit", str(recipe)])
    assert result.exit_code == 0, result.output
    return folder / "run"


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "files", "line", "code", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_hostile_input(name, files, line, code, fragment, tmp_path, finished_run, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the cookbook recipes are named from the repository
    values = {"tmp": tmp_path, "run": finished_run, "model": tiny_model_dir, "out": tmp_path / "out"}
    for relative, content in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == FIFO:
            os.mkfifo(path)
        elif content == COPY_OF_RUN:
            shutil.copytree(finished_run, path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_fill(content, values))
    before = _tree(finished_run)
    made = _tree(tmp_path)
    start = time.monotonic()
    result = CliRunner().invoke(app, [_fill(part, values) for part in line.split()])
    elapsed = time.monotonic() - start
    text = " ".join(result.output.split())
    assert result.exit_code == code, f"{name}: exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert fragment in text, f"{name}: {fragment!r} not in\n{result.output}"
    assert len(result.output.strip().splitlines()) <= 30, result.output  # a message, not a dump
    assert elapsed < 120, f"{name} took {elapsed:.0f} s"
    assert _tree(finished_run) == before, f"{name} changed the finished run"
    after = _tree(tmp_path)
    assert {k: after.get(k) for k in made} == made, f"{name} changed or removed a file it was given"
