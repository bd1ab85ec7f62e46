"""The file formats instruction data comes in, read row by row: JSONL (`read_jsonl`, the one reader of JSONL
files), JSON arrays and Parquet (`raw_rows`), the self-instruct seed format, and the language configs of hub
datasets; a file named after a language (`language_of_file`) gives its rows that language. A malformed file is an
error naming the file, the line (or row) and the field; `parsing` gives other readers that one error format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import languages
from ..errors import DataError
from .segments import Segment
from .types import Record
from .validate import row_id, to_record

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def language_of_file(path: Path) -> str | None:
    """The language a data file is named after (fr.jsonl, french.parquet), else None."""
    return languages.get(path.stem).code if languages.is_known(path.stem) else None


def read_jsonl(path: Path, limit: int | None = None, segment: Segment | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSONL file (of one segment of it), streamed; the one
    reader of JSONL files."""
    segment = segment or Segment(0, -1, 1)
    with open(path, "rb") as handle:
        handle.seek(segment.start)
        position = segment.start
        for number, line in enumerate(handle, start=segment.first_line):
            if (limit is not None and number > limit) or position == segment.end:
                return
            position += len(line)
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {number}: not valid JSON ({exc.msg})") from exc
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: line {number}: not UTF-8 text ({exc.reason})") from exc


@contextmanager
def parsing(path: Path | str, where: str, what: str) -> Iterator[None]:
    """Turn a missing or mistyped field met while reading `where` of `path` into the one error format."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: {where}: not {what} ({type(exc).__name__}: {exc}).") from exc


def raw_rows(path: Path, segment: Segment | None = None) -> Iterator[tuple[int, str, Any]]:
    """(index, where, raw row) of each row of a JSON, JSONL or Parquet file (of one segment of a JSONL file)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path, segment)
    if suffix == ".json":
        return _json_rows(path)
    if suffix == ".parquet":
        return _parquet_rows(path)
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet.")


def _jsonl_rows(path: Path, segment: Segment | None = None) -> Iterator[tuple[int, str, Any]]:
    for number, row in read_jsonl(path, segment=segment):
        yield number - 1, f"line {number}", row


def _json_rows(path: Path) -> Iterator[tuple[int, str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, found {type(data).__name__}.")
    for index, row in enumerate(data):
        yield index, f"record {index} (line {_line_of_item(text, index)})", row


def _line_of_item(text: str, index: int) -> int:
    """The line where the index-th top-level array item starts (for error messages only)."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    for _ in range(index + 1):
        while text[position] in " \t\r\n,":
            position += 1
        start = position
        _, position = decoder.raw_decode(text, position)
    return text.count("\n", 0, start) + 1


def _parquet_rows(path: Path) -> Iterator[tuple[int, str, Any]]:
    import pyarrow.parquet as pq

    index = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield index, f"row {index}", row
                index += 1
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types for a broken file
        raise DataError(f"{path}: not a readable Parquet file (at row {index}: {exc})") from exc


def read_data_file(path: Path, default_lang: str | None, segment: Segment | None = None) -> Iterator[Record]:
    """The records of a data file, in the flat record format or the self-instruct seed format (of one segment of
    a flat JSONL file). The language comes from each row's `lang`, else the file name (`fr.jsonl`), else
    `default_lang`."""
    if path.suffix == ".jsonl" and looks_like_seed_file(path):
        return _read_seed_tasks(path, default_lang)
    return _read_flat_file(path, default_lang, segment)


def _read_flat_file(path: Path, default_lang: str | None, segment: Segment | None) -> Iterator[Record]:
    stem_lang = language_of_file(path)
    for index, where, row in raw_rows(path, segment):
        yield to_record(row, path, where, stem_lang or default_lang, f"{path.stem}-{index}")


def looks_like_seed_file(path: Path) -> bool:
    """Whether a JSONL file is in the self-instruct seed format (its first row has `instances`)."""
    with open(path, encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict) and "instances" in json.loads(first)
    except json.JSONDecodeError:
        return False


def _read_seed_tasks(path: Path, default_lang: str | None) -> Iterator[Record]:
    """The self-instruct seed format: one task per line with `instances: [{input, output}]`; one record each."""
    stem_lang = language_of_file(path)
    for index, where, task in _jsonl_rows(path):
        instances = task.get("instances") if isinstance(task, dict) else None
        if not isinstance(instances, list) or not instances:
            raise DataError(f"{path}: {where}: field 'instances' must be a non-empty list.")
        task_id = row_id(task, f"{path.stem}-{index}")
        for number, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise DataError(f"{path}: {where}: field 'instances[{number}]' must be an object.")
            instance_id = task_id if len(instances) == 1 else f"{task_id}-{number}"
            row = {**instance, "instruction": task.get("instruction"), "lang": task.get("lang"), "id": instance_id}
            yield to_record(row, path, f"{where}, instances[{number}]", stem_lang or default_lang, instance_id)


def hub_split(dataset_id: str, lang: str) -> Any:
    """The train split of one language config of a hub dataset (datasets caches it locally after the first load)."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, lang, split="train")
    except Exception as exc:  # network, missing config, auth: all surface as one clear message
        raise DataError(f"{dataset_id}: could not load config {lang!r} from the hub ({exc}).") from exc


def read_hub_config(dataset_id: str, lang: str) -> Iterator[Record]:
    """One language config of a hub dataset with one config per language, as MBZUAI/Bactrian-X (`--lang fr,de`)."""
    for index, row in enumerate(hub_split(dataset_id, lang)):
        yield to_record(row, f"{dataset_id}[{lang}]", f"row {index}", lang, f"{lang}-{index}")
