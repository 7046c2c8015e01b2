"""Dataset loading through `datasets`: the hub for real runs, local files offline.

Rows are validated one by one so that a malformed row fails with the file and the row named.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from shared.errors import DataAccessError, DataFileError, UserError
from shared.tasks.entrypoints import resolve_path


class DatasetRowError(UserError):
    """A malformed dataset row; the message names the source and the row."""


def row_error(source: str, index: int, problem: str) -> DatasetRowError:
    return DatasetRowError(f"{source} row {index}: {problem}")


def require(row: Any, key: str, source: str, index: int, kind: type | tuple = str) -> Any:
    if not isinstance(row, dict):
        raise row_error(source, index, f"expected an object, got {type(row).__name__}")
    if key not in row or row[key] is None:
        raise row_error(source, index, f"missing field {key!r} (has {sorted(row)})")
    if not isinstance(row[key], kind):
        raise row_error(
            source, index, f"field {key!r} should be {kind}, got {type(row[key]).__name__}"
        )
    return row[key]


def _scan_json_rows(path: Path) -> list[dict]:
    """Read .json (array) or .jsonl ourselves, naming the line of any syntax error."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetRowError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
        if not isinstance(rows, list):
            raise DatasetRowError(f"{path}: expected a JSON array of rows")
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DatasetRowError(
                f"{path} row {len(rows)} (line {lineno}): invalid JSON: {err.msg}"
            ) from err
    return rows


def load_local_rows(path: str | Path) -> list[dict]:
    """Rows of a local .jsonl / .json / .csv / .parquet file.

    JSON is read row by row (exact nested values, and a syntax error names its row); Arrow
    would unify nested structs across rows and fill absent keys with nulls. CSV and Parquet
    go through `datasets`.
    """
    # start-up time: a heavy library, loaded when this runs
    import datasets

    path = resolve_path(path)
    if not path.exists():
        raise DataFileError(
            f"dataset file {path} does not exist; check task.options (data_dir, data_files)"
        )
    if path.suffix in (".json", ".jsonl"):
        rows = _scan_json_rows(path)
        if not rows:
            raise DataFileError(f"dataset file {path} holds no rows; is it the right file?")
        return rows
    builder = {".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
    if builder is None:
        raise UserError(
            f"unsupported dataset file type {path.suffix!r} ({path}); use jsonl, json, csv or parquet"
        )
    return list(datasets.load_dataset(builder, data_files=str(path), split="train"))


def load_hub_rows(repo: str, config: str | None, split: str, gated: bool = False) -> list[dict]:
    # start-up time: a heavy library, loaded when this runs
    import datasets

    try:
        return list(datasets.load_dataset(repo, config, split=split))
    except Exception as err:
        if gated and not (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")):
            raise DataAccessError(
                f"{repo} is a gated dataset: accept its terms on https://huggingface.co/datasets/{repo} "
                "and provide a token (export HF_TOKEN=hf_..., or `hf auth login`); or pass "
                "local files with task.options.data_files=..."
            ) from err
        raise DataAccessError(
            f"could not load {repo} ({config}, {split}) from the Hugging Face hub: {err}. Offline, "
            "point the task at local files with task.options.data_dir=... or data_files=..."
        ) from err


def drop_nulls(value: Any) -> Any:
    """Undo Arrow's struct unification (absent keys come back as None) in nested rows."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def build_examples(
    rows: Iterable[Any], source: str, to_example: Callable[[Any, int, str], Any]
) -> list:
    return [to_example(row, i, source) for i, row in enumerate(rows)]


def find_file(data_dir: str | Path, candidates: Iterable[str]) -> Path:
    data_dir = resolve_path(data_dir)
    if not data_dir.is_dir():
        raise DataFileError(
            f"data folder {data_dir} does not exist; set task.options.data_dir to the folder "
            "with the dataset files (or leave it null to load from the hub)"
        )
    for name in candidates:
        if (data_dir / name).exists():
            return data_dir / name
    raise DataFileError(
        f"none of {list(candidates)} found under {data_dir}; point task.options.data_dir at the "
        "folder that holds them"
    )
