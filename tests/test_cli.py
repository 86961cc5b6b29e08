"""The CLI end to end on the tiny model: fit, eval, score, components."""

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from morl.cli import app

RECIPE = """
policy: {{model: {model}}}
data: {{train: tinymath, eval: tinymath, train_size: 32, eval_size: 4}}
rewards: [accuracy, conciseness, clarity]
controller: {{name: ctwa}}
rollout: {{name: transformers, max_new_tokens: 8}}
train: {{steps: 3, prompts_per_step: 2, group_size: 2, eval_every: 0, progress: false, threads: 1}}
"""


def test_fit_three_steps_then_eval(tiny_model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_model_dir))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["fit", str(recipe), "--output-dir", str(run)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    for name in ("accuracy", "conciseness", "clarity"):
        assert 0.0 <= train[-1][f"rewards/{name}/mean"] <= 1.0
        assert f"weights/{name}" in train[-1] and f"eval/greedy/{name}" in rows[-1]
    AutoModelForCausalLM.from_pretrained(run / "model")
    assert (run / "recipe.yaml").exists() and (run / "training_state.json").exists()
    assert (run / "manifest.json").exists()

    evaluated = CliRunner().invoke(app, ["eval", str(recipe), "--checkpoint", str(run)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "greedy/accuracy" in evaluated.output
    assert "another task" not in evaluated.output

    # a TinySort recipe on this TinyMath checkpoint: evaluated, but never without a word
    other = tmp_path / "sort.yaml"
    other.write_text(
        RECIPE.format(model=tiny_model_dir)
        .replace("train: tinymath, eval: tinymath", "train: tinysort, eval: tinysort")
        .replace("[accuracy, conciseness, clarity]", "[exact_match, brevity]")
        .replace("{name: ctwa}", "{name: fixed}")
    )
    elsewhere = CliRunner().invoke(app, ["eval", str(other), "--checkpoint", str(run)])
    assert elsewhere.exit_code == 0, elsewhere.output
    said = " ".join(elsewhere.output.split())
    assert "was trained on another task" in said and "tinysort" in said and "exact_match" in said


def test_score_existing_completions(tmp_path):
    rows = [
        {"prompt": "1+1?", "completion": "1. 1+1=2\n2. done\n\\boxed{2}", "answer": "2"},
        {"prompt": "1+2?", "completion": "\\boxed{4}", "answer": "3"},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "scored.jsonl"
    result = CliRunner().invoke(app, ["score", str(path), "--rewards", "accuracy,clarity", "--out", str(out)])
    assert result.exit_code == 0, result.output
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rewards"] for r in scored] == [{"accuracy": 1.0, "clarity": 1.0}, {"accuracy": 0.0, "clarity": 0.0}]
    assert "0.5000" in result.output  # both means are 1/2


def test_score_names_a_missing_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": "p"}))
    result = CliRunner().invoke(app, ["score", str(path)])
    assert result.exit_code == 2 and "completion" in result.output


def test_components_lists_every_family_with_fields():
    result = CliRunner().invoke(app, ["components"])
    assert result.exit_code == 0
    for name in ("ctwa", "grpo", "group_norm", "linear", "accuracy", "transformers", "mgda"):
        assert name in result.output
    assert "targets=" in result.output


def test_fit_into_a_run_stops_before_the_model_loads(tiny_model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_model_dir))
    run = tmp_path / "run"
    assert CliRunner().invoke(app, ["fit", str(recipe), "--output-dir", str(run)]).exit_code == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    missing_model = ["--set", "policy.model=/no/such/model"]  # had it loaded, this would fail differently
    again = CliRunner().invoke(app, ["fit", str(recipe), "--output-dir", str(run), *missing_model])
    text = " ".join(again.output.split())
    assert again.exit_code == 2 and "--resume" in text and "--overwrite" in text and "--output-dir" in text, text
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    changed = CliRunner().invoke(
        app,
        ["fit", str(recipe), "--resume", str(run), "--set", "train.lr=0.5", "--set", "train.steps=5", *missing_model],
    )
    text = " ".join(changed.output.split())
    assert changed.exit_code == 2 and "train.lr" in text and "policy.model" in text and "train.steps" not in text, text


# ---- the run directory: what --overwrite removes, a run that failed before its first step ---------------------------


def always_fails(prompts, completions, **kwargs):
    """A reward that fails on every call (a bug fixed between two runs)."""
    raise RuntimeError("this reward is broken")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fit(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["fit", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, " ".join(result.output.split())


def test_overwrite_refuses_a_folder_of_the_users_own_model_and_data(tiny_model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_model_dir))
    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "my_weights.txt").write_text("my weights\n")
    (mine / "data").mkdir()
    (mine / "data" / "train.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n')
    before = _tree(mine)
    code, text = _fit(recipe, "--output-dir", mine, "--overwrite")
    assert code == 2 and "not a morl run" in text and "model/" in text and "data/" in text, text
    assert "Nothing was removed" in text, text
    assert _tree(mine) == before


def test_a_rerun_takes_over_the_folder_of_a_run_that_failed_on_its_first_step(tiny_model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_model_dir))
    run = tmp_path / "run"
    code, text = _fit(recipe, "--output-dir", run, "--set", "rewards.2=tests.test_cli.always_fails")
    assert code == 1 and "this reward is broken" in text, text
    segment = json.loads((run / "manifest.json").read_text())["segments"][-1]
    assert (segment["status"], segment["to_step"]) == ("failed", 0)
    (run / "notes.txt").write_text("mine\n")

    code, text = _fit(recipe, "--output-dir", run)  # the reward fixed: no --overwrite needed
    assert code == 0 and "stopped before its first step" in text, text
    assert (run / "notes.txt").read_text() == "mine\n"
    manifest = json.loads((run / "manifest.json").read_text())
    assert [s["status"] for s in manifest["segments"]] == ["finished"]  # the new run's record alone
    assert "always_fails" not in json.dumps(manifest["recipe"])


# ---- --resume says what it does ------------------------------------------------------------------------------------

RESUMABLE = RECIPE.replace("threads: 1}", "threads: 1, checkpoint_every: 1, keep_checkpoints: 10}")


@pytest.fixture(scope="module")
def three_step_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A finished three-step run with a checkpoint per step (its recipe, its directory); tests resume copies."""
    home = tmp_path_factory.mktemp("resumable")
    recipe = home / "recipe.yaml"
    recipe.write_text(RESUMABLE.format(model=tiny_model_dir))
    code, text = _fit(recipe, "--output-dir", home / "run")
    assert code == 0, text
    return recipe, home / "run"


@pytest.fixture
def run_copy(three_step_run, tmp_path) -> Path:
    shutil.copytree(three_step_run[1], tmp_path / "run")
    return tmp_path / "run"


def test_resume_of_a_finished_run_to_its_own_target_has_nothing_to_do(three_step_run, run_copy):
    before = _tree(run_copy)
    code, text = _fit(three_step_run[0], "--resume", run_copy)
    assert code == 0 and f"nothing to do: {run_copy} already reached train.steps=3" in text, text
    assert _tree(run_copy) == before


def test_resume_to_a_target_below_the_step_reached_is_refused(three_step_run, run_copy):
    before = _tree(run_copy)
    code, text = _fit(three_step_run[0], "--resume", run_copy, "--set", "train.steps=2")
    assert code == 2 and "train.steps=2" in text and "already reached step 3" in text, text
    assert _tree(run_copy) == before


def test_resume_past_the_target_says_it_extends_the_run(three_step_run, run_copy):
    code, text = _fit(three_step_run[0], "--resume", run_copy, "--set", "train.steps=4")
    assert code == 0 and f"extending {run_copy} from 3 to 4 steps" in text and "resuming at step 3" in text, text
    assert json.loads((run_copy / "training_state.json").read_text())["step"] == 4


def test_resume_of_an_interrupted_run_says_it_continues(three_step_run, run_copy):
    shutil.rmtree(run_copy / "checkpoints" / "step-000003")  # as if stopped after step 2
    shutil.rmtree(run_copy / "model")
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["segments"][-1].update(status="interrupted", to_step=2)
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    code, text = _fit(three_step_run[0], "--resume", run_copy)
    assert code == 0 and f"continuing {run_copy} from step 2 to step 3" in text, text


def test_resume_latest_with_the_same_set_values_continues_and_names_those_it_lacks(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The README's lines: a run started with --set, resumed with --resume latest."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RESUMABLE.format(model=tiny_model_dir))
    code, text = _fit(recipe, "--set", "train.steps=2", "--set", "controller.lr=0.25")
    assert code == 0, text
    run = next(Path("runs").iterdir())

    code, text = _fit(recipe, "--resume", "latest", "--set", "controller.lr=0.25", "--set", "train.steps=2")
    assert code == 0 and "nothing to do" in text, text
    code, text = _fit(recipe, "--resume", "latest")  # the run's lr is not the recipe's: refused, and told how
    assert code == 2 and "controller.lr" in text and "--set controller.lr=0.25" in text, text
    code, text = _fit(recipe, "--resume", "latest", "--set", "controller.lr=0.25")  # the recipe's 3 steps
    assert code == 0 and f"extending {run} from 2 to 3 steps" in text, text
    assert json.loads((run / "training_state.json").read_text())["step"] == 3


def test_a_command_run_in_process_gives_ctrl_c_back_as_it_was(tmp_path):
    """`score` makes a second Ctrl-C end it at once while it runs; a notebook or test runner that calls the CLI
    in its own process must get its Ctrl-C handler back afterwards, every delivery of it, not only the first."""
    import subprocess
    import sys

    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": "1+1?", "completion": "\\boxed{2}"}) + "\n")
    script = f"""
import os, signal, time
from typer.testing import CliRunner
from morl.cli import app
seen = []
signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
result = CliRunner().invoke(app, ["score", {str(path)!r}, "--rewards", "clarity"])
assert result.exit_code == 0, result.output
for _ in range(3):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
print("handled", len(seen))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "handled 3" in done.stdout
