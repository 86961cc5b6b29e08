"""Dataset loading: verl parquet (real MATH-500), JSONL/JSON, directories, column maps, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from morl.data import DataError, as_rows, load_examples

MATH500 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math500"


@pytest.fixture(scope="module")
def math500() -> Path:
    if not (MATH500 / "train.parquet").is_file():
        pytest.skip(f"MATH-500 data not found at {MATH500}")
    return MATH500


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- verl parquet, real data ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "n"), [("train", 300), ("val", 100), ("test", 100)])
def test_math500_splits_from_the_directory(math500: Path, split: str, n: int) -> None:
    rows = load_examples(str(math500), split)
    assert len(rows) == n
    for row in rows:
        assert isinstance(row["prompt"], str) and row["prompt"].endswith("within \\boxed{}.")
        assert row["answer"] == row["reward_model"]["ground_truth"]
        assert row["messages"] == [{"content": row["prompt"], "role": "user"}]
    assert {"solution", "level", "subject", "unique_id"} <= set(rows[0])
    assert len({row["unique_id"] for row in rows}) == n


def test_math500_first_row_by_hand(math500: Path) -> None:
    row = load_examples(str(math500 / "train.parquet"), limit=1)[0]
    assert row["prompt"].startswith("If $t(x) = 3-g(x)$ and $g(x) = \\sqrt{x}$, then what is $t(g(16))$?")
    assert row["answer"] == "1"


def test_default_split_is_train_and_limit_keeps_the_first_rows(math500: Path) -> None:
    first = load_examples(str(math500), limit=5)
    assert len(first) == 5
    assert first == load_examples(str(math500), "train")[:5]


def test_columns_map_dotted_paths_and_renames(math500: Path) -> None:
    rows = load_examples(str(math500), "val", columns={"solution": "answer", "extra_info.index": "index"}, limit=3)
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert all("\\boxed" in r["answer"] for r in rows)
    assert "solution" not in rows[0]  # renamed, not copied
    assert "extra_info" in rows[0]  # a dotted path copies the field


# ---- JSONL / JSON / directories -------------------------------------------------------------------------------


def test_jsonl_rows_numbers_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "1+1?", "answer": 2, "id": 7}\n\n{"prompt": "half?", "answer": "0.5"}\n')
    assert load_examples(str(path)) == [
        {"prompt": "1+1?", "answer": "2", "id": 7},
        {"prompt": "half?", "answer": "0.5"},
    ]


def test_aliases_problem_question_and_ground_truth(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [{"problem": "p1", "answer": "1"}, {"question": "p2", "ground_truth": "2"}, {"prompt": "p3", "answer": "3"}],
    )
    rows = load_examples(str(path))
    assert [(r["prompt"], r["answer"]) for r in rows] == [("p1", "1"), ("p2", "2"), ("p3", "3")]


def test_hf_style_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "What?", "solution": "so \\boxed{4}", "answer": "4"}])
    rows = load_examples(str(path), columns={"problem": "prompt", "solution": "reference"})
    assert rows == [{"prompt": "What?", "reference": "so \\boxed{4}", "answer": "4"}]


def test_json_list_and_directory_lookup(tmp_path: Path) -> None:
    (tmp_path / "eval.json").write_text(json.dumps([{"prompt": "a", "answer": "b"}]))
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "c", "answer": "d"}])
    assert load_examples(str(tmp_path), "eval") == [{"prompt": "a", "answer": "b"}]
    assert load_examples(str(tmp_path)) == [{"prompt": "c", "answer": "d"}]


def test_parquet_file_with_chat_prompt_and_limit(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"q{i}"}],
            "reward_model": {"ground_truth": str(i), "style": "rule"},
        }
        for i in range(10)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    loaded = load_examples(str(tmp_path / "t.parquet"), limit=4)
    assert [(r["prompt"], r["answer"]) for r in loaded] == [("q0", "0"), ("q1", "1"), ("q2", "2"), ("q3", "3")]
    assert loaded[0]["messages"][0] == {"role": "system", "content": "be brief"}


def test_chat_prompt_without_a_user_message_is_rendered(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": [{"role": "system", "content": "hi"}], "answer": "1"}])
    assert load_examples(str(path))[0]["prompt"] == "system: hi"


# ---- errors name the problem ----------------------------------------------------------------------------------


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", "answer": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: malformed JSON"):
        load_examples(str(path))
    path.write_text('{"prompt": "a", "answer": "1"}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2: expected a JSON object, got list"):
        load_examples(str(path))


def test_missing_ground_truth_names_the_row_and_the_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b", "solution": "x"}])
    with pytest.raises(DataError, match=r"row 1 has no answer .*columns present: \['prompt', 'solution'\]"):
        load_examples(str(path))
    path = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "a", "answer": None}])
    with pytest.raises(DataError, match="row 0 has no answer"):
        load_examples(str(path))


def test_missing_prompt_and_missing_mapped_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "answer": "1"}])
    with pytest.raises(DataError, match=r"row 0 has no prompt .*columns present: \['answer', 'text'\]"):
        load_examples(str(path))
    with pytest.raises(DataError, match=r"row 0 has no column 'meta\.gt'"):
        load_examples(str(path), columns={"text": "prompt", "meta.gt": "answer"})


def test_non_text_prompt_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": {"x": 1}, "answer": "1"}])
    with pytest.raises(DataError, match="row 0: prompt must be text, got dict"):
        load_examples(str(path))


def test_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        load_examples(str(tmp_path / "e.jsonl"))
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(DataError, match="empty"):
        load_examples(str(tmp_path / "e.json"))


def test_unknown_file_type_missing_split_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    with pytest.raises(DataError, match=r"unknown file type '\.csv'"):
        load_examples(str(tmp_path / "d.csv"))
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "answer": "1"}])
    with pytest.raises(DataError, match=r"no test\.parquet, test\.jsonl or test\.json; data files present: \['train"):
        load_examples(str(tmp_path), "test")
    with pytest.raises(DataError, match="no such file or directory"):
        load_examples(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="expected a JSON list"):
        (tmp_path / "o.json").write_text('{"prompt": "a"}')
        load_examples(str(tmp_path / "o.json"))
    with pytest.raises(DataError, match="not a readable parquet file"):
        (tmp_path / "x.parquet").write_text("not parquet")
        load_examples(str(tmp_path / "x.parquet"))
    with pytest.raises(DataError, match="limit must be a positive"):
        load_examples(str(tmp_path), limit=0)


def test_hub_dataset_without_the_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if it were not installed
    with pytest.raises(DataError, match="pip install datasets"):
        load_examples("HuggingFaceH4/MATH-500", "test")


# ---- TinyMath -------------------------------------------------------------------------------------------------


def test_tinymath_source() -> None:
    pytest.importorskip("morl.tinymath.task")
    rows = load_examples("tinymath", "eval", limit=5)
    assert len(rows) == 5
    assert all(isinstance(r["prompt"], str) and r["answer"].isdigit() for r in rows)
    assert rows == load_examples("tinymath", "eval", limit=5)


# ---- data in memory: lists, datasets.Dataset, IterableDataset ----------------------------------------------------

ROWS = [{"prompt": "1 + 2 - 0", "answer": "3", "level": i} for i in range(4)]


def test_as_rows_accepts_lists_and_datasets() -> None:
    datasets = pytest.importorskip("datasets")
    assert as_rows(None) is None
    assert as_rows(ROWS) is ROWS  # a list of dicts is used as it is, not copied
    assert as_rows(tuple(ROWS)) == ROWS and as_rows(iter(ROWS)) == ROWS
    table = datasets.Dataset.from_list(ROWS)
    assert as_rows(table) == ROWS
    assert as_rows(table.with_format("torch")) == ROWS  # plain values, whatever format the user set
    assert as_rows(datasets.IterableDataset.from_generator(lambda: iter(ROWS))) == ROWS


def test_as_rows_refuses_what_is_not_rows() -> None:
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})
    with pytest.raises(DataError, match=r"train_data: expected rows, got a mapping \(DatasetDict\).*\['train'\]"):
        as_rows(splits, "train_data")
    with pytest.raises(DataError, match="expected rows .* got a str"):
        as_rows("data.jsonl")
    with pytest.raises(DataError, match="row 1 is a str, not a mapping"):
        as_rows([{"prompt": "a"}, "b"])
    with pytest.raises(DataError, match="got int"):
        as_rows(3)


def test_fit_takes_datasets_for_train_eval_and_validation(tiny_policy, tmp_path) -> None:
    """A TRL user's ``datasets.Dataset`` trains, evaluates and validates as a list of rows would."""
    datasets = pytest.importorskip("datasets")
    from morl.pipeline import Pipeline, TrainConfig
    from morl.tinymath.task import make_split

    def short(prompts, completions, **kwargs):
        return [float(len(c) < 4) for c in completions]

    config = TrainConfig(
        steps=2, prompts_per_step=2, group_size=2, eval_every=0, output_dir=str(tmp_path / "run"), progress=False
    )
    pipe = Pipeline(
        policy=tiny_policy, rewards=[short], config=config, rollout={"name": "transformers", "max_new_tokens": 4}
    )
    train, evals = make_split("train", 6, 0), make_split("eval", 3, 0)
    pipe.validation_data = datasets.IterableDataset.from_generator(lambda: iter(evals))
    result = pipe.fit(datasets.Dataset.from_list(train), datasets.Dataset.from_list(evals))
    assert [row["step"] for row in result.evals_] == [0, 2] and "eval/greedy/short" in result.evals_[-1]
    assert pipe.validation_data == evals
