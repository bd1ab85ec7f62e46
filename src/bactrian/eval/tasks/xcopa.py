"""XCOPA (cause and effect, 11 languages): the published JSONL files (val.<lang>.jsonl) or the hub dataset,
with lm-evaluation-harness's prompt (the premise, its language's connector, each choice lower-cased)."""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from .base import Item, MultipleChoiceTask, shared
from .registry import register
from .sources import field, find_file, hub_rows, jsonl_rows

HUB_ID = "cambridgeltl/xcopa"
# lm-evaluation-harness's XCOPA connectors (cause, effect) per language
XCOPA_CONNECTORS = {
    "et": ("sest", "seetõttu"), "ht": ("poukisa", "donk sa"), "it": ("perché", "quindi"), "id": ("karena", "maka"),
    "qu": ("imataq", "chaymi"), "sw": ("kwa sababu", "kwa hiyo"), "zh": ("因为", "所以"), "ta": ("காரணமாக", "எனவே"),
    "th": ("เพราะ", "ดังนั้น"), "tr": ("çünkü", "bu yüzden"), "vi": ("bởi vì", "vì vậy"),
}


def read_xcopa(root: Path | None, langs: list[str]) -> dict[str, list[Item]]:
    langs = langs or sorted(XCOPA_CONNECTORS)
    items: dict[str, list[Item]] = {}
    for lang in langs:
        if lang not in XCOPA_CONNECTORS:
            raise ConfigError(f"xcopa has no language {lang!r}; it has {', '.join(sorted(XCOPA_CONNECTORS))}.")
        path = find_file(root, "xcopa", [f"val.{lang}.jsonl", f"*.{lang}.jsonl"])
        rows = jsonl_rows(path) if path else hub_rows(HUB_ID, lang, "validation")
        cause, effect = XCOPA_CONNECTORS[lang]
        items[lang] = []
        for index, row in enumerate(rows):
            where = f"line {index + 1}"
            premise = str(field(row, "premise", path, where)).strip()
            connector = cause if field(row, "question", path, where) == "cause" else effect
            choices = [_lower_first(str(field(row, key, path, where))) for key in ("choice1", "choice2")]
            continuations = [f" {choice}" for choice in choices]
            items[lang].append(Item(f"xcopa-{lang}-{index}", lang, shared(f"{premise[:-1]} {connector}", continuations),
                                    tuple(continuations), int(field(row, "label", path, where)), tuple(choices)))
    return items


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


register(MultipleChoiceTask("xcopa", read_xcopa))
