"""Load prompts with ground-truth answers: local files, verl parquet, the Hugging Face hub, TinyMath or TinySort.

Every loader returns a list of rows (dicts) with at least ``prompt`` (str) and ``answer`` (str); other
columns are kept and reach the rewards as keyword arguments. Where the columns come from:

- ``columns`` maps source names (dotted paths for nested fields) to morl names, e.g.
  ``{"problem": "prompt", "solution": "answer"}`` or ``{"reward_model.ground_truth": "answer"}``;
- otherwise a missing ``prompt`` is taken from ``problem`` or ``question``, and a missing ``answer`` from
  ``reward_model.ground_truth`` (verl) or ``ground_truth``;
- a chat-format ``prompt`` (a list of ``{"role", "content"}`` messages, as in verl parquet files) is kept as
  ``messages``, and ``prompt`` becomes the content of its last user message;
- ``prompt_template`` (e.g. ``"{prompt} Let's think step by step and output the final answer within \\boxed{}."``)
  rewrites raw problems (hub datasets) into the instruction the model is trained with: ``{prompt}`` is replaced
  by the prompt, in ``prompt`` and in the last user turn of ``messages``. verl files carry it already.

Data already in memory — a list of dicts, a ``datasets.Dataset`` or ``IterableDataset`` (what TRL users hold), a
pandas ``DataFrame`` — becomes that list of rows at the entrance of a fit (:func:`as_rows`), unchanged otherwise.

Example:
    >>> rows = load_examples("tinymath", "train", limit=2)
    >>> len(rows), sorted(rows[0])
    (2, ['answer', 'prompt'])
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Problems per TinyMath (or TinySort) split when no ``limit`` is given.
TINYMATH_DEFAULT_N = {"train": 2000, "eval": 200}
#: Data sources generated in process: the embedded tasks, ``morl.<name>.task.make_split``.
EMBEDDED_TASKS = ("tinymath", "tinysort")

_PROMPT_ALIASES = ("problem", "question")
_ANSWER_ALIASES = ("reward_model.ground_truth", "ground_truth")
_FILE_TYPES = (".parquet", ".jsonl", ".json")
_MISSING = object()


class DataError(ValueError):
    """A dataset cannot be used; the message names the source, the row or line, and what is wrong."""


def load_examples(
    source: str,
    split: str | None = None,
    *,
    columns: dict[str, str] | None = None,
    limit: int | None = None,
    prompt_template: str | None = None,
) -> list[dict[str, Any]]:
    """Rows with ``prompt`` and ``answer`` (both str) plus every other column of the source.

    Args:
        source: ``"tinymath"`` or ``"tinysort"``; a ``.jsonl``, ``.json`` or ``.parquet`` file; a directory holding
            ``{split}.parquet``, ``{split}.jsonl`` or ``{split}.json``; or a hub dataset name
            (``"HuggingFaceH4/MATH-500"``, needs the optional ``datasets`` package).
        split: which split of a directory, hub dataset or embedded task (default ``"train"``); ignored for a file.
        columns: source column (or dotted path) -> morl column, applied before the defaults.
        limit: keep only the first ``limit`` rows.
        prompt_template: text with ``{prompt}`` where the prompt goes (applied after the column mapping).

    Raises:
        DataError: empty dataset, missing prompt or ground truth (with the row index and the columns present),
            malformed JSON line (with its number), unknown file type, or a source that does not exist.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of rows or None, got {limit!r}")
    if prompt_template is not None and "{prompt}" not in prompt_template:
        raise DataError(f"prompt_template must contain '{{prompt}}' where the prompt goes, got {prompt_template!r}")
    rows = _read(source, split, limit)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        where = f" (split {split!r})" if split else ""
        raise DataError(f"{source}{where}: the dataset is empty")
    out = [_normalize(row, i, source, columns or {}) for i, row in enumerate(rows)]
    return [_templated(row, prompt_template) for row in out] if prompt_template else out


def as_rows(data: Any, name: str = "data") -> list[dict[str, Any]] | None:
    """``data`` as the list of row dicts that training, evaluation and validation index, shuffle and shard.

    Why at the entrance: the loop takes rows by position, samples them and splits them across processes, which a
    ``datasets.Dataset`` (rows by position, but a batch of columns for a slice) or an ``IterableDataset`` (no
    positions) does not support the same way; converting once keeps every later stage on one type.

    Accepts ``None`` (returned as is), a list of dicts (returned as is, not copied), a ``datasets.Dataset`` or
    ``IterableDataset`` (read in full, as plain Python values whatever format was set: an endless stream never
    ends, so ``take(n)`` it first), a pandas ``DataFrame``, or any other iterable of mappings. Columns are kept
    as they are; no prompt or answer aliasing happens here (that is :func:`load_examples`'s job for files).

    Raises:
        DataError: a string, a mapping (a ``DatasetDict``: pick a split) or a row that is not a mapping.

    Example:
        >>> as_rows(({"prompt": "1 + 1", "answer": "2"},))
        [{'prompt': '1 + 1', 'answer': '2'}]
    """
    if data is None:
        return None
    if isinstance(data, list) and all(type(row) is dict for row in data):
        return data
    if isinstance(data, (str, bytes)):
        raise DataError(f"{name}: expected rows (dicts with a prompt), got a {type(data).__name__}: {data!r:.60}")
    if isinstance(data, Mapping):
        splits = f"; its keys: {sorted(map(str, data))[:8]}" if data else ""
        raise DataError(
            f"{name}: expected rows, got a mapping ({type(data).__name__}){splits}. A DatasetDict holds splits: "
            f"pass one, e.g. dataset['train']; columns of lists: datasets.Dataset.from_dict(...)"
        )
    if hasattr(data, "with_format") and type(data).__module__.startswith("datasets"):
        data = data.with_format(None)  # plain Python values, not tensors or arrays from set_format("torch")
    elif hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame iterates over its columns
        data = data.to_dict(orient="records")
    if not isinstance(data, Iterable):
        raise DataError(f"{name}: expected a list of rows or a datasets.Dataset, got {type(data).__name__}")
    rows = []
    for index, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise DataError(f"{name}: row {index} is a {type(row).__name__}, not a mapping of columns: {row!r:.80}")
        rows.append(dict(row))
    return rows


# ---- reading ---------------------------------------------------------------------------------------------------


def _read(source: str, split: str | None, limit: int | None) -> list[dict[str, Any]]:
    if source in EMBEDDED_TASKS:
        return _read_embedded(source, split or "train", limit)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_file(_split_file(path, split or "train"), limit)
    if path.is_file():
        return _read_file(path, limit)
    if path.exists():  # a named pipe or a device: reading it could block or never end
        raise DataError(
            f"{source}: not a regular file (a named pipe or a device); give a .jsonl, .json or .parquet file"
        )
    if _looks_like_hub_name(source):
        return _read_hub(source, split or "train", limit)
    raise DataError(
        f"{source}: no such file or directory; give a .jsonl, .json or .parquet file, a directory with "
        f"{{split}}.parquet/.jsonl/.json, 'tinymath', 'tinysort', or a Hugging Face dataset name such as "
        "'HuggingFaceH4/MATH-500'"
    )


def _read_embedded(source: str, split: str, limit: int | None) -> list[dict[str, Any]]:
    """The ``train`` or ``eval`` split of an embedded task, generated with seed 0 (the same rows every time)."""
    if source == "tinysort":  # lazy: only these sources need them
        from morl.tinysort.task import make_split
    else:
        from morl.tinymath.task import make_split
    n = limit if limit is not None else TINYMATH_DEFAULT_N.get(split, TINYMATH_DEFAULT_N["eval"])
    return [dict(row) for row in make_split(split, n, 0)]


def _split_file(directory: Path, split: str) -> Path:
    for suffix in _FILE_TYPES:
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in directory.iterdir() if p.suffix in _FILE_TYPES)
    raise DataError(f"{directory}: no {split}.parquet, {split}.jsonl or {split}.json; data files present: {present}")


def _read_file(path: Path, limit: int | None) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path, limit)
    if suffix == ".jsonl":
        return _read_jsonl(path, limit)
    if suffix == ".json":
        return _read_json(path)
    raise DataError(f"{path}: unknown file type {suffix or '(none)'!r}; expected .jsonl, .json or .parquet")


def _read_parquet(path: Path, limit: int | None) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        if limit is None:
            return file.read().to_pylist()
        rows: list[dict[str, Any]] = []
        for batch in file.iter_batches(batch_size=min(limit, 65536)):
            rows.extend(batch.to_pylist())
            if len(rows) >= limit:
                break
        return rows
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable parquet file ({err})") from None


def _read_jsonl(path: Path, limit: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with path.open("rb") as f:  # decoded line by line, so an undecodable byte is reported with its line
        for number, raw in enumerate(f, start=1):
            line = _decode(path, raw, number)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {number}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _read_json(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    try:
        data = json.loads(_decode(path, raw, None))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {i} is {type(row).__name__}, expected a JSON object")
    return data


def _decode(path: Path, raw: bytes, line: int | None) -> str:
    """``raw`` as UTF-8 text; a ``DataError`` naming the file, line and byte otherwise (``line`` None: ``raw`` is
    the whole file, and the line is counted up to the bad byte)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        number = line if line is not None else raw.count(b"\n", 0, err.start) + 1
        start = raw.rfind(b"\n", 0, err.start) + 1 if line is None else 0
        raise DataError(
            f"{path}, line {number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start - start + 1}); "
            "save the file as UTF-8"
        ) from None


def _looks_like_hub_name(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~")) and Path(source).suffix == ""


def _read_hub(name: str, split: str, limit: int | None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{name}: loading a Hugging Face hub dataset needs the optional 'datasets' package; "
            "run `pip install datasets`, or download the data and give a local file"
        ) from None
    try:
        dataset = datasets.load_dataset(name, split=split)  # split slices work: "test[:400]", "test[400:]"
    except Exception as err:  # no network, unknown name or split: say which, and the way around it
        raise DataError(
            f"{name} (split {split!r}): cannot load the hub dataset ({type(err).__name__}: {err}); check the name and "
            "split, or download it and give a local .jsonl/.parquet path (e.g. --set data.train=PATH)"
        ) from None
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return [dict(row) for row in dataset]


# ---- normalising -----------------------------------------------------------------------------------------------


def _normalize(row: dict[str, Any], index: int, source: str, columns: dict[str, str]) -> dict[str, Any]:
    out = dict(row)
    for src, dst in columns.items():
        value = _lookup(row, src)
        if value is _MISSING:
            raise DataError(
                f"{source}: row {index} has no column {src!r} (asked for by columns={columns}); "
                f"columns present: {sorted(row)}"
            )
        if "." not in src and src != dst:
            out.pop(src, None)
        out[dst] = value
    if "prompt" not in out:
        _fill_from_alias(out, row, "prompt", _PROMPT_ALIASES)
    if _is_chat(out.get("prompt")):
        out.setdefault("messages", out["prompt"])
        out["prompt"] = _user_text(out["prompt"])
    if out.get("answer") is None:
        _fill_from_alias(out, row, "answer", _ANSWER_ALIASES)
    for name, aliases in (("prompt", _PROMPT_ALIASES), ("answer", _ANSWER_ALIASES)):
        value = out.get(name)
        if value is None:
            raise DataError(
                f"{source}: row {index} has no {name} (looked for {name!r}, then {', '.join(map(repr, aliases))}); "
                f"columns present: {sorted(row)}; map yours with columns={{'your_column': {name!r}}}"
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise DataError(f"{source}: row {index}: {name} must be text, got {type(value).__name__}: {value!r:.80}")
        if name == "prompt" and not value.strip():  # the model would be asked to continue nothing
            raise DataError(f"{source}: row {index}: empty prompt {value!r}; every row needs a question to answer")
        out[name] = value
    return out


def _templated(row: dict[str, Any], template: str) -> dict[str, Any]:
    """The row with ``{prompt}`` of ``template`` filled by its prompt, in ``prompt`` and in the last user turn."""
    out = dict(row, prompt=template.replace("{prompt}", row["prompt"]))
    messages = out.get("messages")
    if _is_chat(messages):
        turns = [dict(m) for m in messages]
        for turn in reversed(turns):
            if turn["role"] == "user" and isinstance(turn["content"], str):
                turn["content"] = template.replace("{prompt}", turn["content"])
                break
        out["messages"] = turns
    return out


def _fill_from_alias(out: dict[str, Any], row: dict[str, Any], name: str, aliases: tuple[str, ...]) -> None:
    for alias in aliases:
        value = _lookup(row, alias)
        if value is not _MISSING and value is not None:
            out[name] = value
            return


def _lookup(row: dict[str, Any], path: str) -> Any:
    """``row[path]``, or the nested field for a dotted path (``reward_model.ground_truth``); _MISSING if absent."""
    if path in row:
        return row[path]
    value: Any = row
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _is_chat(prompt: Any) -> bool:
    return (
        isinstance(prompt, list)
        and len(prompt) > 0
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt)
    )


def _user_text(messages: list[dict[str, Any]]) -> str:
    """Content of the last user message; a ``role: content`` rendering when there is none."""
    for message in reversed(messages):
        if message["role"] == "user" and isinstance(message["content"], str):
            return message["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
