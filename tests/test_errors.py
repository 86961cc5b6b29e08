"""Errors, not tracebacks: every wrong input a hostile user tried ends in a message that names the offending file,
line, field or value, with exit code 2 (bad input) or 1 (a run that failed), and leaves existing runs untouched."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from morl.checkpoint import (
    CorruptCheckpoint,
    find_checkpoint,
    list_checkpoints,
    load_rng,
    resume_intact,
    verify_checkpoint,
)
from morl.data import DataError, load_examples
from morl.policy import ModelLoadError, Policy
from tests.small_runs import checkpointed_recipe, invoke_cli, snapshot

ROOT = os.geteuid() == 0  # root writes anywhere: permission cases cannot fail for it


def boom(prompts, completions, **kwargs):
    """A reward that raises on completions containing 'boom' and returns NaN on those containing 'nan'."""
    if any("boom" in c for c in completions):
        raise RuntimeError("the checker exploded")
    return [math.nan if "nan" in c else 1.0 for c in completions]


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A three-step run with a checkpoint per step (its recipe, its directory); tests damage copies of it."""
    home = tmp_path_factory.mktemp("errors")
    recipe = checkpointed_recipe(home, tiny_model_dir)
    run = home / "run"
    code, text = invoke_cli("fit", recipe, "--output-dir", run)
    assert code == 0, text
    return recipe, run


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run[1], copy)
    return copy


# ---- the output directory -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "under_file", "read_only"])
def test_unusable_output_dir_stops_before_the_model_loads(tmp_path, where):
    if where == "read_only" and ROOT:
        pytest.skip("root can write into a read-only folder")
    recipe = checkpointed_recipe(tmp_path, "/no/such/model")  # had the model loaded, the error would name it instead
    blocker = tmp_path / "blocker"
    blocker.write_text("a user's file\n")
    out = {"file": blocker, "under_file": blocker / "run", "read_only": tmp_path / "locked" / "run"}[where]
    if where == "read_only":
        (tmp_path / "locked").mkdir(mode=0o555)
    try:
        code, text = invoke_cli("fit", recipe, "--output-dir", out)
    finally:
        (tmp_path / "locked").exists() and (tmp_path / "locked").chmod(0o755)
    assert code == 2 and "/no/such/model" not in text, text
    assert (str(blocker) if where != "read_only" else str(tmp_path / "locked")) in text, text
    assert blocker.read_text() == "a user's file\n"


def test_default_runs_folder_that_is_a_file_stops_before_the_model_loads(tmp_path, monkeypatch):
    recipe = checkpointed_recipe(tmp_path, "/no/such/model")
    monkeypatch.chdir(tmp_path)
    Path("runs").write_text("not a folder\n")
    code, text = invoke_cli("fit", recipe)
    assert code == 2 and "runs is a file" in text and "/no/such/model" not in text, text


def test_resume_into_a_read_only_run_stops_before_the_model_loads(trained_run, run_copy):
    if ROOT:
        pytest.skip("root can write into a read-only folder")
    before = snapshot(run_copy)
    run_copy.chmod(0o555)
    try:
        code, text = invoke_cli("fit", trained_run[0], "--resume", run_copy, "--set", "policy.model=/no/such/model")
    finally:
        run_copy.chmod(0o755)
    assert code == 2 and str(run_copy) in text and "permission denied" in text, text
    assert snapshot(run_copy) == before


# ---- a damaged newest checkpoint ------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "model/model.safetensors": _truncate,
    "optimizer.pt": _truncate,
    "rng.pt": _truncate,
    "model/config.json": Path.unlink,
    "training_state.json": lambda p: p.write_text('{"step": 3, "data_po'),
}


@pytest.mark.parametrize("damaged", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_named_and_the_previous_one_used(run_copy, damaged, capsys):
    newest = run_copy / "checkpoints" / "step-000003"
    DAMAGE[damaged](newest / damaged)
    with pytest.raises(CorruptCheckpoint, match=damaged.split("/")[-1]):
        verify_checkpoint(newest)
    capsys.readouterr()
    assert find_checkpoint(run_copy) == run_copy / "checkpoints" / "step-000002"
    out = " ".join(capsys.readouterr().out.split())
    assert "skipping damaged checkpoint" in out and f"step-000003/{damaged}" in out, out
    assert "resuming from the previous intact checkpoint" in out and "step-000002" in out, out
    with pytest.raises(CorruptCheckpoint, match="step-000003"):  # named directly: an error, not a silent swap
        find_checkpoint(newest)


def test_cli_resume_past_a_damaged_checkpoint_keeps_it(trained_run, run_copy):
    newest = run_copy / "checkpoints" / "step-000003"
    _truncate(newest / "model" / "model.safetensors")
    damaged = snapshot(newest)
    code, text = invoke_cli("fit", trained_run[0], "--resume", run_copy, "--set", "train.steps=4")
    assert code == 0, text
    assert "step-000003/model/model.safetensors" in text and "previous intact checkpoint" in text, text
    shelved = list((run_copy / "checkpoints" / "abandoned").glob("*/step-000003"))
    assert len(shelved) == 1 and snapshot(shelved[0]) == damaged  # moved aside whole, not deleted
    assert [c.name for c in list_checkpoints(run_copy)[0]][-1] == "step-000004"


def test_every_checkpoint_damaged_is_an_error_that_names_them(trained_run, run_copy):
    for step in (1, 2, 3):
        (run_copy / "checkpoints" / f"step-00000{step}" / "rng.pt").write_bytes(b"")
    before = snapshot(run_copy)
    code, text = invoke_cli("fit", trained_run[0], "--resume", run_copy)
    assert code == 2 and "every complete checkpoint is damaged" in text and "step-000001/rng.pt" in text, text
    assert snapshot(run_copy) == before


def test_resume_intact_falls_back_when_loading_fails(run_copy, capsys):
    """Damage the checks cannot see (a readable rng.pt that holds something else, in a checkpoint written before
    checkpoints recorded their files' digests) fails while loading."""
    newest = run_copy / "checkpoints" / "step-000003"
    torch.save({"not": "rng states"}, newest / "rng.pt")
    with pytest.raises(CorruptCheckpoint, match="rng.pt: not the file this checkpoint wrote"):
        verify_checkpoint(newest)  # the digest the marker records catches it
    (newest / "complete").write_text('{"step": 3}\n')  # the marker of an earlier morl: no digests
    verify_checkpoint(newest)  # passes: the file is whole
    state = torch.get_rng_state()
    used, _ = resume_intact(newest, load_rng)
    assert used == run_copy / "checkpoints" / "step-000002"
    out = " ".join(capsys.readouterr().out.split())
    assert "step-000003/rng.pt" in out and "previous intact checkpoint" in out, out
    torch.set_rng_state(state)


# ---- morl eval --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "empty", "torn", "damaged", "damaged_final_model"])
def test_eval_of_a_missing_empty_or_torn_checkpoint(trained_run, run_copy, tmp_path, case):
    step = run_copy / "checkpoints" / "step-000003"
    if case == "torn":
        (step / "complete").unlink()
    if case == "damaged":
        _truncate(step / "model" / "model.safetensors")
    if case == "damaged_final_model":
        _truncate(run_copy / "model" / "model.safetensors")
    targets = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "damaged_final_model": run_copy}
    target = targets.get(case, step)
    if case == "empty":
        target.mkdir()
    before = snapshot(run_copy)
    code, text = invoke_cli("eval", trained_run[0], "--checkpoint", target)
    assert code == 2 and str(target) in text, text
    expected = {"missing": "no such file", "empty": "empty directory", "torn": "torn"}.get(case, "truncated")
    assert expected in text, text
    assert snapshot(run_copy) == before


# ---- morl score -------------------------------------------------------------------------------------------------


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_reports_failed_rows_with_null_and_the_reason(tmp_path):
    rows = [
        {"prompt": "a", "completion": "fine"},
        {"prompt": "b", "completion": "boom"},
        {"prompt": "c", "completion": "nan"},
        {"prompt": "d", "completion": "\\boxed{4}", "answer": "4"},  # the only row with an answer
    ]
    source = _jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    code, text = invoke_cli("score", source, "--rewards", "accuracy,tests.test_errors.boom", "--out", out)
    assert code == 1, text
    assert f"{source}:2" in text and "exploded" in text, text  # the first failed row, by line, and why
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rewards"]["boom"] for r in scored] == [1.0, None, None, 1.0]  # never a silent 0
    assert "exploded" in scored[1]["reward_errors"]["boom"] and "nan" in scored[2]["reward_errors"]["boom"]
    assert [r["rewards"]["accuracy"] for r in scored] == [None, None, None, 1.0]  # columns from every row
    assert "reward_errors" not in scored[0] and "reward_errors" not in scored[3]
    for heading in ("scored", "n/a", "failed", "cut off", "timed out", "not applicable"):  # the last in the caption
        assert heading in text
    cells = " ".join(text.replace("│", " ").split())  # the table's rows, cell by cell
    assert "accuracy 1.0000 1 3 0 0" in cells and "boom 1.0000 2 0 2 0" in cells, text


def test_score_conciseness_compares_with_the_files_mean_or_a_given_length(tmp_path):
    source = _jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "completion": "x" * n} for n in (1, 3, 8)])  # mean 4
    out = tmp_path / "scored.jsonl"
    code, text = invoke_cli("score", source, "--rewards", "conciseness", "--out", out)
    assert code == 0 and "4.0 characters" in text, text
    assert [json.loads(line)["rewards"]["conciseness"] for line in out.read_text().splitlines()] == [1.0, 1.0, 0.0]
    code, text = invoke_cli("score", source, "--rewards", "conciseness", "--out", out, "--mean-length", "2")
    assert code == 0, text
    assert [json.loads(line)["rewards"]["conciseness"] for line in out.read_text().splitlines()] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "case",
    ["completion_not_text", "out_is_dir", "duplicate", "not_utf8", "not_json"],
)
def test_score_bad_input_is_named(tmp_path, case):
    rows = [{"prompt": "p", "completion": "c", "answer": "1"}, {"prompt": "q", "completion": 7}]
    source = _jsonl(tmp_path / "c.jsonl", rows if case == "completion_not_text" else rows[:1] * 2)
    if case == "not_utf8":
        source.write_bytes(source.read_bytes() + b'{"prompt": "caf\xe9", "completion": "x"}\n')
    if case == "not_json":
        source.write_text(source.read_text() + '{"prompt": \n')
    (tmp_path / "outdir").mkdir()
    args = ["score", source, "--rewards", "clarity,clarity" if case == "duplicate" else "clarity"]
    if case == "out_is_dir":
        args += ["--out", tmp_path / "outdir"]
    before = source.read_bytes()
    code, text = invoke_cli(*args)
    expected = {
        "completion_not_text": (f"{source}:2", "completion must be text"),
        "out_is_dir": (str(tmp_path / "outdir"), "is a directory"),
        "duplicate": ("'clarity'", "given twice"),
        "not_utf8": (f"{source}:3", "not UTF-8"),
        "not_json": (f"{source}:3", "not valid JSON"),
    }[case]
    assert code == 2 and all(e in text for e in expected), text
    assert source.read_bytes() == before and not any((tmp_path / "outdir").iterdir())


# ---- the policy model ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    path = tmp_path_factory.mktemp("bert")
    config = BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    BertForMaskedLM(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("case", ["bert", "empty", "tokenizer_only", "missing", "config_only"])
def test_policy_from_pretrained_names_what_is_wrong(bert_dir, tiny_model_dir, tmp_path, case):
    path = tmp_path / "model"
    if case == "bert":
        path = bert_dir
    elif case == "missing":
        path = tmp_path / "no" / "such" / "model"
    else:
        path.mkdir()
        if case == "tokenizer_only":
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(tiny_model_dir / name, path)
        if case == "config_only":
            shutil.copy(tiny_model_dir / "config.json", path)
    expected = {
        "bert": "BertForMaskedLM",
        "empty": "it is empty",
        "tokenizer_only": "no config.json",
        "missing": "no such directory",
        "config_only": "no weights",
    }[case]
    with pytest.raises(ModelLoadError, match=expected) as info:
        Policy.from_pretrained(str(path))
    assert str(path) in str(info.value) and "Repo id" not in str(info.value)


def test_fit_with_a_model_that_is_not_a_causal_lm_stops_with_a_message(bert_dir, tmp_path):
    recipe = checkpointed_recipe(tmp_path, bert_dir)
    code, text = invoke_cli("fit", recipe, "--output-dir", tmp_path / "run")
    assert code == 2 and "not a causal language model" in text and str(bert_dir) in text, text
    assert not (tmp_path / "run").exists()


# ---- data --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["empty_prompt", "not_utf8_jsonl", "not_utf8_json"])
def test_data_errors_name_the_file_and_line(tiny_model_dir, tmp_path, case):
    good = {"prompt": "1+1?", "answer": "2"}
    if case == "empty_prompt":
        path = _jsonl(tmp_path / "train.jsonl", [good, {"prompt": "  ", "answer": "1"}])
        expected = (str(path), "row 1", "empty prompt")
    elif case == "not_utf8_jsonl":
        path = _jsonl(tmp_path / "train.jsonl", [good])
        path.write_bytes(path.read_bytes() + b'{"prompt": "\xff", "answer": "1"}\n')
        expected = (str(path), "line 2", "not UTF-8", "0xff")
    else:
        path = tmp_path / "train.json"
        path.write_bytes(b'[{"prompt": "1+1?", "answer": "2"},\n {"prompt": "\xe9", "answer": "1"}]')
        expected = (str(path), "line 2", "not UTF-8", "column 14")
    with pytest.raises(DataError) as info:
        load_examples(str(path))
    assert all(e in str(info.value) for e in expected), str(info.value)
    recipe = checkpointed_recipe(tmp_path, "/no/such/model")
    data = yaml.safe_load(recipe.read_text())
    data["data"] = {"train": str(path), "eval": str(path)}
    recipe.write_text(yaml.safe_dump(data))
    code, text = invoke_cli("fit", recipe, "--output-dir", tmp_path / "run")
    assert code == 2 and all(e in text for e in expected), text


def test_score_counts_each_row_once_and_says_which_checks_were_cut_off(tmp_path):
    """A check cut off at its limit is scored (incorrect, by default) and said as such; it is not also a timed-out
    row, so scored + not applicable + failed + timed out is the number of rows."""
    tower = r"\boxed{10^{10^{10^{10^{10}}}}}"
    rows = [{"prompt": "p", "completion": c, "answer": "1"} for c in (r"\boxed{1}", r"\boxed{2}", tower)]
    source = _jsonl(tmp_path / "c.jsonl", rows)
    code, text = invoke_cli("score", source, "--rewards", "accuracy")
    assert code == 0, text
    cells = " ".join(text.replace("│", " ").split())
    assert "accuracy 0.3333 3 0 0 1 0" in cells, text  # 3 scored, 1 of them cut off (scored 0), none timed out
