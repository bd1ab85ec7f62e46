"""Instruction records and their readers and writers: JSON, JSONL, Parquet, `datasets` folders, per-language
folders, hub dataset ids and the self-instruct seed format. Every record carries `id` and `lang`; a malformed file
is an error naming the file, the line (or row) and the field. The names below are the package's API; each file
holds one concern (types, sources, segments, formats, preferences, fields, validate, datasets)."""

from .datasets import (
    read_instructions,
    read_preferences,
    read_rows,
    write_by_language,
    write_jsonl,
    write_jsonl_rows,
    write_parquet,
)
from .formats import hub_split, parsing, read_jsonl
from .segments import Segment, jsonl_segments
from .sources import Source, load_records, sources
from .types import Instruction, Record
from .validate import check_unique_ids

__all__ = [
    "Instruction", "Record", "Segment", "Source", "check_unique_ids", "hub_split", "jsonl_segments", "load_records",
    "parsing", "read_instructions", "read_jsonl", "read_preferences", "read_rows", "sources", "write_by_language",
    "write_jsonl", "write_jsonl_rows", "write_parquet",
]
