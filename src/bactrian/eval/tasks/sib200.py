"""SIB-200 (the topic of a FLORES-200 sentence, one of seven): the published dev.tsv per FLORES code or the hub
dataset; each topic is scored after the sentence and "Topic:"."""

from __future__ import annotations

from pathlib import Path

from ... import languages
from ...errors import DataError
from .base import Item, MultipleChoiceTask, shared
from .registry import register
from .sources import field, find_file, hub_rows, tsv_rows

HUB_ID = "Davlan/sib200"


def sib200_rows(root: Path | None, lang: str) -> tuple[Path | None, list[dict]]:
    """The SIB-200 dev rows (`index_id`, `category`, `text`) of a language, from `root` or else the hub, and the
    file they came from (None from the hub). Its texts are FLORES-200 sentences."""
    flores = languages.get(lang).flores
    path = find_file(root, "sib-200", [f"{flores}/dev.tsv"]) or find_file(root, "sib200", [f"{flores}/dev.tsv"])
    return path, tsv_rows(path) if path else hub_rows(HUB_ID, flores, "validation")


def read_sib200(root: Path | None, langs: list[str]) -> dict[str, list[Item]]:
    langs = langs or list(languages.CODES)
    items: dict[str, list[Item]] = {}
    for lang in langs:
        path, rows = sib200_rows(root, lang)
        labels_file = path.parent / "labels.txt" if path else None
        labels = (labels_file.read_text(encoding="utf-8").split() if labels_file and labels_file.is_file()
                  else sorted({str(row["category"]) for row in rows}))
        items[lang] = []
        for index, row in enumerate(rows):
            where = f"row {index}"
            category = str(field(row, "category", path, where))
            if category not in labels:
                raise DataError(f"{path}: {where}: field 'category' {category!r} is not one of {labels}.")
            text = str(field(row, "text", path, where)).strip()
            continuations = [f" {label}" for label in labels]
            items[lang].append(Item(f"sib200-{lang}-{row.get('index_id', index)}", lang,
                                    shared(f"{text}\nTopic:", continuations), tuple(continuations),
                                    labels.index(category), tuple(labels)))
    return items


register(MultipleChoiceTask("sib200", read_sib200))
