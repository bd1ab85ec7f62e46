"""Instruction records and their readers: JSON, JSONL, Parquet, `datasets` folders, per-language folders,
hub dataset ids, and the self-instruct seed format. Every record carries `id` and `lang`; a malformed file
is an error naming the file, the line (or row) and the field."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import languages
from .errors import DataError

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Record:
    """An instruction and its answer (`output`); a preference record also has a `rejected` answer (its `output`
    is the chosen one)."""

    id: str
    lang: str
    instruction: str
    input: str
    output: str
    rejected: str = ""

    def to_dict(self) -> dict[str, str]:
        row = asdict(self)
        if not self.rejected:
            row.pop("rejected")
        return row


@dataclass(frozen=True)
class Segment:
    """A run of whole lines of a JSONL file: bytes [start, end), the first of them line `first_line`."""

    start: int
    end: int
    first_line: int


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
            return _read_saved_dataset(Path(self.location), self.default_lang)
        if self.kind == "hub":
            return _read_hub_config(self.location, str(self.default_lang))
        return _read_seed_or_records(Path(self.location), self.default_lang, segment)

    def segments(self, size: int) -> list[Segment | None]:
        """Pieces of about `size` bytes that can be read apart (only plain JSONL files split; others: [None])."""
        path = Path(self.location)
        if self.kind != "file" or path.suffix != ".jsonl" or _looks_like_seed_file(path):
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


def jsonl_segments(path: Path, size: int) -> list[Segment]:
    """Cut a JSONL file into segments of about `size` bytes at line ends, numbering their first lines (one pass
    over the file, counting newlines in C)."""
    total = path.stat().st_size
    segments: list[Segment] = []
    start, line = 0, 1
    with open(path, "rb") as handle:
        while start < total:
            handle.seek(min(start + size, total))
            handle.readline()  # to the end of the line the cut falls in
            end = handle.tell()
            segments.append(Segment(start, end, line))
            handle.seek(start)
            line += _count_newlines(handle, end - start)
            start = end
    return segments


def _count_newlines(handle: Any, length: int, block: int = 1 << 24) -> int:
    count = 0
    while length > 0:
        chunk = handle.read(min(block, length))
        count += chunk.count(b"\n")
        length -= len(chunk)
    return count


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


def _single(langs: list[str] | None) -> str | None:
    return langs[0] if langs and len(langs) == 1 else None


def language_of_file(path: Path) -> str | None:
    """The language a data file is named after (fr.jsonl, french.parquet), else None."""
    return languages.get(path.stem).code if languages.is_known(path.stem) else None


def _read_file(path: Path, default_lang: str | None = None, segment: Segment | None = None) -> Iterator[Record]:
    """Records of one JSON, JSONL or Parquet file (of one segment of a JSONL file). The language comes from each
    row's `lang`, else the file name (`fr.jsonl`), else `default_lang`."""
    stem_lang = language_of_file(path)
    for index, where, row in _raw_rows(path, segment):
        yield _to_record(row, path, where, stem_lang or default_lang, f"{path.stem}-{index}")


def _raw_rows(path: Path, segment: Segment | None = None) -> Iterator[tuple[int, str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path, segment)
    if suffix == ".json":
        return _json_rows(path)
    if suffix == ".parquet":
        return _parquet_rows(path)
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet.")


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


def _to_record(row: Any, source: Path | str, where: str, default_lang: str | None, default_id: str) -> Record:
    """Validate one raw row: an instruction record, or a preference record (`chosen` and `rejected` answers, with
    `instruction`/`input` or TRL's `prompt`, plain text or conversational). Null, missing and empty `input` are
    the same."""
    if not isinstance(row, dict):
        raise DataError(f"{source}: {where}: expected an object with instruction/output, found {type(row).__name__}.")
    if "chosen" in row or "rejected" in row:
        instruction, text_input, output, rejected = _preference_fields(row, source, where)
    else:
        instruction = _text_field(row, "instruction", source, where, required=True)
        output = _text_field(row, "output", source, where, required=True, may_be_blank=True)
        text_input, rejected = _text_field(row, "input", source, where, required=False), ""
    lang = row.get("lang") or default_lang
    if not lang:
        raise DataError(
            f"{source}: {where}: field 'lang' is missing and the language cannot be told from the file name; "
            "add a 'lang' field, name the file after its language (fr.jsonl), or pass one --lang."
        )
    if not languages.is_known(str(lang)):
        raise DataError(f"{source}: {where}: field 'lang' has unknown language {lang!r}.")
    record_id = row.get("id")
    if record_id is None or record_id == "":
        record_id = default_id
    return Record(str(record_id), languages.get(str(lang)).code, instruction, text_input, output, rejected)


def _preference_fields(row: dict, source: Path | str, where: str) -> tuple[str, str, str, str]:
    """(instruction, input, chosen, rejected) of a preference row. TRL's conversational format (lists of
    {role, content} messages) becomes the last user message as the instruction, earlier ones before it."""
    if "instruction" in row:
        instruction = _text_field(row, "instruction", source, where, required=True)
        text_input = _text_field(row, "input", source, where, required=False)
    elif isinstance(row.get("prompt"), list):
        instruction, text_input = _user_text(row["prompt"], source, where), ""
    else:
        instruction, text_input = _text_field(row, "prompt", source, where, required=True), ""
    answers = []
    for field in ("chosen", "rejected"):
        value = row.get(field)
        if isinstance(value, list):
            answers.append(_assistant_text(value, field, source, where))
        else:
            answers.append(_text_field(row, field, source, where, required=True))
    return instruction, text_input, answers[0], answers[1]


def _messages(value: list, field: str, source: Path | str, where: str) -> list[dict]:
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in value):
        raise DataError(f"{source}: {where}: field '{field}' must be a list of {{role, content}} messages.")
    return value


def _user_text(value: list, source: Path | str, where: str) -> str:
    messages = [m["content"] for m in _messages(value, "prompt", source, where) if m["role"] in ("system", "user")]
    if not messages:
        raise DataError(f"{source}: {where}: field 'prompt' has no user message.")
    return "\n\n".join(messages)


def _assistant_text(value: list, field: str, source: Path | str, where: str) -> str:
    replies = [m["content"] for m in _messages(value, field, source, where) if m["role"] == "assistant"]
    if not replies or not "".join(replies).strip():
        raise DataError(f"{source}: {where}: field '{field}' has no assistant message.")
    return "\n\n".join(replies)


def _text_field(row: dict, field: str, source: Path | str, where: str, required: bool,
                may_be_blank: bool = False) -> str:
    value = row.get(field)
    if value is None:
        if required:
            raise DataError(f"{source}: {where}: field '{field}' is missing.")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{source}: {where}: field '{field}' must be a string, found {type(value).__name__}.")
    if required and not may_be_blank and not value.strip():
        raise DataError(f"{source}: {where}: field '{field}' is empty.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"{source}: {where}: field '{field}' holds a lone surrogate ({value[exc.start]!r} at "
                        f"character {exc.start}), which is not text; fix the row (its JSON escapes half of a "
                        "character).") from None
    return value


def _read_seed_or_records(path: Path, default_lang: str | None, segment: Segment | None = None) -> Iterator[Record]:
    """Read a file in either the flat record format or the self-instruct seed format."""
    if path.suffix == ".jsonl" and _looks_like_seed_file(path):
        return _read_seed_tasks(path, default_lang)
    return _read_file(path, default_lang, segment)


def _looks_like_seed_file(path: Path) -> bool:
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
        for number, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise DataError(f"{path}: {where}: field 'instances[{number}]' must be an object.")
            row = {**instance, "instruction": task.get("instruction"), "lang": task.get("lang")}
            task_id = task.get("id") or f"{path.stem}-{index}"
            row["id"] = task_id if len(instances) == 1 else f"{task_id}-{number}"
            where_instance = f"{where}, instances[{number}]"
            yield _to_record(row, path, where_instance, stem_lang or default_lang, row["id"])


def _read_saved_dataset(folder: Path, default_lang: str | None) -> Iterator[Record]:
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
            yield _to_record(row, folder, where, default, f"{split_name}-{index}")


def hub_split(dataset_id: str, lang: str) -> Any:
    """The train split of one language config of a hub dataset (datasets caches it locally after the first load)."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, lang, split="train")
    except Exception as exc:  # network, missing config, auth: all surface as one clear message
        raise DataError(f"{dataset_id}: could not load config {lang!r} from the hub ({exc}).") from exc


def _read_hub_config(dataset_id: str, lang: str) -> Iterator[Record]:
    """One language config of a hub dataset with one config per language, as MBZUAI/Bactrian-X (`--lang fr,de`)."""
    for index, row in enumerate(hub_split(dataset_id, lang)):
        yield _to_record(row, f"{dataset_id}[{lang}]", f"row {index}", lang, f"{lang}-{index}")


def write_jsonl(path: Path, records: Iterable[Record]) -> None:
    write_jsonl_rows(path, (record.to_dict() for record in records))


def write_jsonl_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    from .fileio import atomic_write_bytes

    lines = (json.dumps(row, ensure_ascii=False) for row in rows)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


@dataclass(frozen=True)
class Instruction:
    """A row to answer: `instruction`, optional `input`, `lang` and `id`."""

    id: str
    lang: str | None
    instruction: str
    input: str


def check_unique_ids(keys: Iterable[tuple[Any, str]]) -> None:
    """Work is keyed by row id: two rows with one id would get each other's results. `keys` are (key, where), the
    key an id or a tuple ending with one (e.g. (lang, id))."""
    seen: dict[Any, str] = {}
    for key, where in keys:
        if key in seen:
            shown = key[-1] if isinstance(key, tuple) else key
            raise DataError(f"{where}: duplicate id {shown!r}, already used at {seen[key]}; give every row its own "
                            "id.")
        seen[key] = where


def read_instructions(path: Path) -> list[Instruction]:
    """Rows to generate answers for (instruction, optional input, lang, id), from `read_rows`."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file.")
    return [Instruction(row["id"], row["lang"], row["instruction"], row["input"])
            for row in read_rows(str(path), lang_required=False)]


def read_rows(path: str, lang_required: bool = True) -> list[dict[str, Any]]:
    """The one reader of rows: every field of each row of a JSON/JSONL/Parquet file or of a folder of
    per-language files (named by language; other files there, such as reports, are ignored), checked: an
    `instruction`, an optional `input`, `lang` from the row or else the file name (required unless
    `lang_required` is off, then None when unknown), `id` from the row or else <file>-<row>, unique (per
    language when languages are required: a translated row keeps its source's id)."""
    local = Path(path)
    files = sorted(p for p in local.iterdir() if p.suffix in DATA_SUFFIXES and language_of_file(p)) \
        if local.is_dir() else [local]
    if not files or not all(file.is_file() for file in files):
        raise DataError(f"{path}: no .json, .jsonl or .parquet data here.")
    rows, places = [], []
    for file in files:
        for index, where, row in _raw_rows(file):
            rows.append(_checked_row(row, file, where, index, lang_required))
            key = (rows[-1]["lang"], rows[-1]["id"]) if lang_required else rows[-1]["id"]
            places.append((key, f"{file}: {where}"))
    check_unique_ids(places)
    return rows


def _checked_row(row: Any, file: Path, where: str, index: int, lang_required: bool) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{file}: {where}: expected an object with an instruction, found {type(row).__name__}.")
    _text_field(row, "instruction", file, where, required=True)
    _text_field(row, "input", file, where, required=False)
    lang = row.get("lang") or language_of_file(file)
    if (lang or lang_required) and not (lang and languages.is_known(str(lang))):
        raise DataError(f"{file}: {where}: field 'lang' is missing or unknown ({lang!r}); name the file "
                        "after its language or add a 'lang' field.")
    return {**row, "id": str(row.get("id") or f"{file.stem}-{index}"),
            "lang": languages.get(str(lang)).code if lang else None, "input": row.get("input") or ""}
