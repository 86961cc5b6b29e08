"""The CLI end to end on the tiny model: fit, eval, score, components."""

import json

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
