"""Dataset folders and files read or written whole, the one home of that IO: `datasets` save_to_disk folders,
folders of per-language files read as checked rows (`read_rows`, `read_instructions`) and written (one JSONL or
Parquet file per language, `write_by_language`, `write_parquet`), and JSONL writers."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .. import languages
from ..errors import DataError
from ..fileio import atomic_write_bytes, atomic_write_with
from .formats import DATA_SUFFIXES, language_of_file, raw_rows
from .preferences import is_preference
from .types import Instruction, Record
from .validate import check_row, check_unique_ids, to_record

log = logging.getLogger(__name__)

DATASET_COLUMNS = ("id", "lang", "instruction", "input", "output")


def read_saved_dataset(folder: Path, default_lang: str | None) -> Iterator[Record]:
    """A `datasets` save_to_disk folder, read row by row from its memory-mapped Arrow files."""
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        parts = [(name, split) for name, split in loaded.items()]
    else:
        parts = [("train", loaded)]
    for split_name, split in parts:
        default = languages.get(split_name).code if languages.is_known(split_name) else default_lang
        for index, row in enumerate(split):
            where = f"split {split_name!r} row {index}"
            yield to_record(row, folder, where, default, f"{split_name}-{index}")


def read_rows(path: str, lang_required: bool = True) -> list[dict[str, Any]]:
    """The one reader of rows: every field of each row of a JSON/JSONL/Parquet file or of a folder of
    per-language files (named by language; other files there, such as reports, are ignored), checked by
    `check_row` (an `instruction`, an optional `input`, `lang` from the row or else the file name, required
    unless `lang_required` is off, `id` from the row or else <file>-<row>), ids unique (per language when
    languages are required: a translated row keeps its source's id)."""
    local = Path(path)
    files = sorted(p for p in local.iterdir() if p.suffix in DATA_SUFFIXES and language_of_file(p)) \
        if local.is_dir() else [local]
    if not files or not all(file.is_file() for file in files):
        raise DataError(f"{path}: no .json, .jsonl or .parquet data here.")
    rows, places = [], []
    for file in files:
        for index, where, row in raw_rows(file):
            checked = check_row(row, file, where, language_of_file(file), f"{file.stem}-{index}", answers=False,
                                lang_required=lang_required)
            rows.append({**row, **checked})
            places.append(((checked["lang"], checked["id"]) if lang_required else checked["id"], f"{file}: {where}"))
    check_unique_ids(places)
    return rows


def read_instructions(path: Path) -> list[Instruction]:
    """Rows to generate answers for (instruction, optional input, lang, id), from `read_rows`."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file.")
    return [Instruction(row["id"], row["lang"], row["instruction"], row["input"])
            for row in read_rows(str(path), lang_required=False)]


def read_preferences(path: str) -> Iterator[Record]:
    """The preference rows of one JSON/JSONL/Parquet file (e.g. the pairs `serve --guard_pairs_file` appends), one
    at a time, each checked by `check_row`; a row without `chosen` and `rejected` is an error naming the file, the
    line and the field, where a plain instruction reader would take it for an SFT row."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: no such file.")
    for index, where, row in raw_rows(file):
        if isinstance(row, dict) and not is_preference(row):
            raise DataError(f"{file}: {where}: field 'chosen' is missing (a preference pair has chosen and "
                            "rejected).")
        yield to_record(row, file, where, language_of_file(file), f"{file.stem}-{index}")


def write_jsonl(path: Path, records: Iterable[Record]) -> None:
    write_jsonl_rows(path, (record.to_dict() for record in records))


def write_jsonl_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    lines = (json.dumps(row, ensure_ascii=False) for row in rows)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def write_by_language(folder: Path, rows: list[dict[str, Any]]) -> dict[str, int]:
    """One JSONL file per language (<lang>.jsonl); the rows of each language."""
    by_lang: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_lang[row["lang"]].append(row)
    for lang, lang_rows in by_lang.items():
        write_jsonl_rows(folder / f"{lang}.jsonl", lang_rows)
    _remove_other_languages(folder, set(by_lang), ".jsonl")
    return {lang: len(lang_rows) for lang, lang_rows in sorted(by_lang.items())}


def write_parquet(rows: list[dict[str, Any]], out: Path, first: tuple[str, ...] = DATASET_COLUMNS) -> dict[str, int]:
    """One Parquet file per language: the dataset columns (`first`), then every provenance column the rows
    carry."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    for lang in sorted({row["lang"] for row in rows}):
        lang_rows = [row for row in rows if row["lang"] == lang]
        extra = sorted({key for row in lang_rows for key in row} - set(first) - {"filter_reasons"})
        columns = {key: [_text(row.get(key)) for row in lang_rows] for key in (*first, *extra)}
        atomic_write_with(out / f"{lang}.parquet", lambda tmp, table=pa.table(columns): pq.write_table(table, tmp))
        counts[lang] = len(lang_rows)
    _remove_other_languages(out, set(counts), ".parquet")
    return counts


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _remove_other_languages(folder: Path, kept: set[str], suffix: str) -> None:
    """An output folder holds exactly this run's languages: files of others (an earlier run with other --langs,
    a language a stricter filter emptied) and leftovers of a killed write go, so no later step reads them."""
    for path in folder.glob(f"*{suffix}"):
        if languages.is_known(path.stem) and path.stem not in kept:
            log.info("%s: removing %s, which this run did not produce.", folder, path.name)
            path.unlink()
    for leftover in folder.glob(f".*{suffix}.*"):
        leftover.unlink(missing_ok=True)
