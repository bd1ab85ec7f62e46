"""XWinograd (which of two names fills the blank): the published JSONL or Parquet files or the hub dataset,
scored as lm-evaluation-harness does (partial scoring)."""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from .base import Item, MultipleChoiceTask
from .registry import register
from .sources import field, find_file, hub_rows, jsonl_rows

HUB_ID = "Muennighoff/xwinograd"
XWINOGRAD_NAMES = {"ja": "jp"}  # the dataset's own name for Japanese


def read_xwinograd(root: Path | None, langs: list[str]) -> dict[str, list[Item]]:
    """Partial scoring: each option fills the blank, and the shared rest of the sentence is what is scored."""
    langs = langs or ["en", "fr", "ja", "pt", "ru", "zh"]
    items: dict[str, list[Item]] = {}
    for lang in langs:
        name = XWINOGRAD_NAMES.get(lang, lang)
        path = find_file(root, "xwinograd", [f"{name}.jsonl", f"{name}.parquet", f"{name}/*.parquet"])
        if path is None:
            rows = hub_rows(HUB_ID, name, "test")
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            rows = jsonl_rows(path)
        items[lang] = []
        for index, row in enumerate(rows):
            where = f"row {index}"
            sentence = str(field(row, "sentence", path, where))
            if "_" not in sentence:
                raise DataError(f"{path}: {where}: field 'sentence' has no '_' blank.")
            blank = sentence.index("_")
            options = [str(field(row, key, path, where)) for key in ("option1", "option2")]
            rest = " " + sentence[blank + 1:].strip()
            contexts = [sentence[:blank] + option for option in options]
            label = int(field(row, "answer", path, where)) - 1
            items[lang].append(Item(f"xwinograd-{lang}-{index}", lang, tuple(contexts), (rest, rest), label,
                                    (rest, rest)))
    return items


register(MultipleChoiceTask("xwinograd", read_xwinograd))
