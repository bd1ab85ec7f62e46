"""A task file of one's own: multiple-choice items in JSONL or YAML (`context`, `choices`, `label`, optional
`lang` and `id`), named on the command line by its path instead of a task name."""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from .base import Item, MultipleChoiceTask, shared
from .sources import field, jsonl_rows

TASK_FILE_SUFFIXES = (".jsonl", ".yaml", ".yml")


def file_task(path: Path) -> MultipleChoiceTask:
    """The task of a task file: it reads the file, whatever the data folder and languages."""
    return MultipleChoiceTask(str(path), lambda root, langs: read_task_file(path))


def read_task_file(path: Path) -> dict[str, list[Item]]:
    """Rows with `context`, `choices` (a list of continuations), `label` (index), optional `lang` and `id`."""
    if path.suffix == ".jsonl":
        rows = jsonl_rows(path)
    else:
        import yaml

        rows = yaml.safe_load(path.read_text(encoding="utf-8"))
        rows = rows.get("items", rows) if isinstance(rows, dict) else rows
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a list of items with context, choices and label.")
    items: dict[str, list[Item]] = {}
    for index, row in enumerate(rows):
        where = f"item {index}"
        choices = field(row, "choices", path, where)
        label = field(row, "label", path, where)
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{path}: {where}: field 'choices' must be a list of at least two strings.")
        if not isinstance(label, int) or not 0 <= label < len(choices):
            raise DataError(f"{path}: {where}: field 'label' must be an index into choices.")
        lang = str(row.get("lang") or "und")
        context = str(field(row, "context", path, where))
        items.setdefault(lang, []).append(Item(str(row.get("id", f"{path.stem}-{index}")), lang,
                                               shared(context, choices), tuple(choices), label, tuple(choices)))
    return items
