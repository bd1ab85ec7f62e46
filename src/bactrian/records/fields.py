"""The check of one text field of a raw row: present when required, a string, not blank unless allowed, and
real text (no lone surrogate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError


def text_field(row: dict[str, Any], field: str, source: Path | str, where: str, required: bool,
               may_be_blank: bool = False) -> str:
    """The text of `row[field]` ("" when it is missing or null and not `required`)."""
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
