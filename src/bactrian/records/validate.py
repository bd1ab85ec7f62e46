"""The one row validator every reader uses (`check_row`, and `to_record` on it): what a raw row must hold, where
its language comes from, and its id: an explicit id, 0 included, is kept as text ("0"); an absent, null or empty
one gets the reader's default (<file>-<row>). Also the check that ids are unique."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import languages
from ..errors import DataError
from .fields import text_field
from .preferences import is_preference, preference_fields
from .types import Record


def check_row(row: Any, source: Path | str, where: str, default_lang: str | None, default_id: str, *,
              answers: bool = True, lang_required: bool = True) -> dict[str, Any]:
    """The checked fields of one raw row: `instruction` and `input` (null, missing and empty are the same), with
    `answers` also `output` (may be blank) and `rejected` ("" unless it is a preference row: `chosen` and
    `rejected`, with `instruction`/`input` or TRL's `prompt`, plain text or conversational); `lang` (the row's,
    else `default_lang`; None when unknown and not `lang_required`) and `id` (`row_id`)."""
    if not isinstance(row, dict):
        raise DataError(f"{source}: {where}: expected an object with an instruction, found {type(row).__name__}.")
    if answers and is_preference(row):
        instruction, text_input, output, rejected = preference_fields(row, source, where)
        fields = {"instruction": instruction, "input": text_input, "output": output, "rejected": rejected}
    else:
        fields = {"instruction": text_field(row, "instruction", source, where, required=True)}
        if answers:
            fields["output"] = text_field(row, "output", source, where, required=True, may_be_blank=True)
            fields["rejected"] = ""
        fields["input"] = text_field(row, "input", source, where, required=False)
    lang = _row_lang(row, source, where, default_lang, lang_required)
    return {"id": row_id(row, default_id), "lang": lang, **fields}


def to_record(row: Any, source: Path | str, where: str, default_lang: str | None, default_id: str) -> Record:
    """One raw row as a Record (`check_row` with its answers and a language)."""
    return Record(**check_row(row, source, where, default_lang, default_id))


def row_id(row: dict[str, Any], default: str) -> str:
    """A row's id as text: an explicit id is kept, 0 included ("0"); an absent, null or empty one is `default`."""
    value = row.get("id")
    return default if value is None or value == "" else str(value)


def _row_lang(row: dict[str, Any], source: Path | str, where: str, default_lang: str | None,
              required: bool) -> str | None:
    lang = row.get("lang") or default_lang
    if not lang:
        if not required:
            return None
        raise DataError(
            f"{source}: {where}: field 'lang' is missing and the language cannot be told from the file name; "
            "add a 'lang' field, name the file after its language (fr.jsonl), or pass one --lang where the "
            "command takes it."
        )
    if not languages.is_known(str(lang)):
        raise DataError(f"{source}: {where}: field 'lang' has unknown language {lang!r}.")
    return languages.get(str(lang)).code


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
