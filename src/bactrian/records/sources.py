"""What data paths hold, found without reading rows: `Source`s (a data file, a `datasets` save_to_disk folder,
one language config of a hub dataset) in reading order, each streaming its records, a JSONL file in segments
that can be read apart; and `load_records`, every record of some data paths in memory."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .datasets import read_saved_dataset
from .formats import DATA_SUFFIXES, language_of_file, looks_like_seed_file, read_data_file, read_hub_config
from .segments import Segment, jsonl_segments
from .types import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One unit of instruction data as it is read: a data file (`file`), a `datasets` save_to_disk folder
    (`saved`) or one language config of a hub dataset (`hub`). Rows that name no language get `default_lang`
    (a single --lang) unless the file or split is named after one."""

    location: str
    kind: str
    default_lang: str | None = None

    def records(self, segment: Segment | None = None) -> Iterator[Record]:
        """The records, streamed; `segment` restricts a JSONL file to some of its lines."""
        if self.kind == "saved":
            return read_saved_dataset(Path(self.location), self.default_lang)
        if self.kind == "hub":
            return read_hub_config(self.location, str(self.default_lang))
        return read_data_file(Path(self.location), self.default_lang, segment)

    def segments(self, size: int) -> list[Segment | None]:
        """Pieces of about `size` bytes that can be read apart (only plain JSONL files split; others: [None])."""
        path = Path(self.location)
        if self.kind != "file" or path.suffix != ".jsonl" or looks_like_seed_file(path):
            return [None]
        return jsonl_segments(path, size) or [None]


def sources(data_paths: str | list[str], langs: list[str] | None = None) -> list[Source]:
    """What the data paths hold, in reading order (a folder's files sorted; files named after a language not in
    `langs` left out), without reading any rows."""
    paths = [data_paths] if isinstance(data_paths, str) else list(data_paths)
    if not paths:
        raise DataError("No --data_path given.")
    return [source for path in paths for source in _sources_of(path, langs)]


def _sources_of(path: str, langs: list[str] | None) -> list[Source]:
    local = Path(path)
    if local.is_dir():
        if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
            return [Source(str(local), "saved", _single(langs))]
        files = sorted(file for file in local.iterdir() if file.suffix in DATA_SUFFIXES and file.is_file())
        if not files:
            raise DataError(f"{local}: no .json, .jsonl or .parquet files in this folder.")
        return [_file_source(file, langs) for file in files if not langs or language_of_file(file) in (None, *langs)]
    if local.is_file():
        return [_file_source(local, langs)]
    if local.suffix in DATA_SUFFIXES or path.startswith((".", "/")):
        raise DataError(f"{path}: no such file or folder.")
    if not langs:
        raise DataError(f"{path}: a hub dataset with one config per language needs --lang (e.g. --lang fr,de or all).")
    return [Source(path, "hub", lang) for lang in langs]


def _file_source(path: Path, langs: list[str] | None) -> Source:
    """A file named after its language needs no default (and so is the same Source whatever --lang says)."""
    return Source(str(path), "file", None if language_of_file(path) else _single(langs))


def _single(langs: list[str] | None) -> str | None:
    return langs[0] if langs and len(langs) == 1 else None


def load_records(data_paths: str | list[str], langs: list[str] | None = None) -> list[Record]:
    """Read every record from one or more data paths into memory, keeping only `langs` when given (training
    streams through `sources` instead).

    A language asked for but absent from the data is an error, as is data that ends up empty."""
    paths = [data_paths] if isinstance(data_paths, str) else list(data_paths)
    records = [record for source in sources(paths, langs) for record in source.records()]
    records = _without_empty_outputs(records)
    if langs:
        records = [record for record in records if record.lang in langs]
        missing = sorted(set(langs) - {record.lang for record in records})
        if missing:
            raise DataError(f"Language(s) {', '.join(missing)} asked for with --lang but not found in {paths}.")
    if not records:
        raise DataError(f"No instruction records found in {paths}.")
    return records


def _without_empty_outputs(records: list[Record]) -> list[Record]:
    """Rows whose output is empty teach nothing but EOS: they are left out, and said so."""
    empty = [record for record in records if not record.output.strip()]
    if empty:
        log.warning("Left out %d record(s) with an empty output: %s%s", len(empty),
                    ", ".join(f"{record.lang}:{record.id}" for record in empty[:10]), " ..." if len(empty) > 10 else "")
    return [record for record in records if record.output.strip()]
