"""Belebele (reading comprehension of FLORES-200 passages, four answers): the published JSONL per FLORES code or
the hub dataset, with lm-evaluation-harness's prompt."""

from __future__ import annotations

from pathlib import Path

from ... import languages
from ...errors import DataError
from .base import Item, MultipleChoiceTask, shared
from .registry import register
from .sources import field, find_file, hub_rows, jsonl_rows

HUB_ID = "facebook/belebele"
BELEBELE_LETTERS = ("A", "B", "C", "D")


def read_belebele(root: Path | None, langs: list[str]) -> dict[str, list[Item]]:
    """Belebele's published JSONL (<FLORES code>.jsonl: flores_passage, question, mc_answer1-4,
    correct_answer_num), with lm-evaluation-harness's prompt: the passage, the question, the four lettered answers,
    and the letter scored."""
    langs = langs or list(languages.CODES)
    items: dict[str, list[Item]] = {}
    for lang in langs:
        flores = languages.get(lang).flores
        path = find_file(root, "belebele", [f"{flores}.jsonl"])
        rows = jsonl_rows(path) if path else hub_rows(HUB_ID, flores, "test")
        items[lang] = []
        for index, row in enumerate(rows):
            where = f"line {index + 1}"
            answers = [str(field(row, f"mc_answer{k}", path, where)) for k in range(1, 5)]
            lettered = "\n".join(f"{letter}: {answer}" for letter, answer in zip(BELEBELE_LETTERS, answers))
            passage, question = (str(field(row, key, path, where)) for key in ("flores_passage", "question"))
            context = f"P: {passage}\nQ: {question.strip()}\n{lettered}\nAnswer:"
            label = str(field(row, "correct_answer_num", path, where))
            if label not in ("1", "2", "3", "4"):
                raise DataError(f"{path}: {where}: field 'correct_answer_num' must be 1, 2, 3 or 4, not {label!r}.")
            continuations = tuple(f" {letter}" for letter in BELEBELE_LETTERS)
            items[lang].append(Item(f"belebele-{lang}-{index}", lang, shared(context, list(continuations)),
                                    continuations, int(label) - 1, BELEBELE_LETTERS))
    return items


register(MultipleChoiceTask("belebele", read_belebele))
