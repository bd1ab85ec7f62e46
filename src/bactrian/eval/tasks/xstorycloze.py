"""XStoryCloze (the right ending of a four-sentence story): the published TSV files or the hub dataset, with
lm-evaluation-harness's prompt (the four sentences, each ending scored after them)."""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from .base import Item, MultipleChoiceTask, shared
from .registry import register
from .sources import field, find_file, hub_rows, tsv_rows

HUB_ID = "juletxara/xstory_cloze"


def read_xstorycloze(root: Path | None, langs: list[str]) -> dict[str, list[Item]]:
    if not langs:
        raise ConfigError("xstorycloze needs --langs (e.g. ru,zh,es,ar,hi,id,te,sw,eu,my).")
    items: dict[str, list[Item]] = {}
    for lang in langs:
        path = find_file(root, "xstorycloze", [f"*{lang}*eval*.tsv", f"*.{lang}.*tsv", f"{lang}.tsv"])
        rows = tsv_rows(path) if path else hub_rows(HUB_ID, lang, "eval")
        items[lang] = []
        for index, row in enumerate(rows):
            where = f"row {index}"
            context = " ".join(str(field(row, f"InputSentence{k}", path, where)) for k in range(1, 5))
            endings = [str(field(row, f"RandomFifthSentenceQuiz{k}", path, where)) for k in (1, 2)]
            label = int(field(row, "AnswerRightEnding", path, where)) - 1
            continuations = [f" {ending}" for ending in endings]
            items[lang].append(Item(f"xstorycloze-{lang}-{index}", lang, shared(context, continuations),
                                    tuple(continuations), label, tuple(endings)))
    return items


register(MultipleChoiceTask("xstorycloze", read_xstorycloze))
