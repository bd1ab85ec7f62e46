"""What a task is: a multiple-choice task reads (context, continuations, label) items per language; a generative
task reads prompts, bounds its answers, scores each answer and summarises a group of scored answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Item:
    """One question: for each choice a context and the continuation scored after it, and the right choice."""

    id: str
    lang: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    label: int
    choice_texts: tuple[str, ...]  # what acc_norm divides by (the choice strings, as lm-eval does)


def shared(context: str, continuations: list[str]) -> tuple[str, ...]:
    """The same context for every choice."""
    return (context,) * len(continuations)


@dataclass(frozen=True)
class MultipleChoiceTask:
    """Items per language, read from the folder of published files (None: the hub) for the languages asked
    (none: all the task has)."""

    name: str
    load: Callable[[Path | None, list[str]], dict[str, list[Item]]]


@dataclass(frozen=True)
class Prompt:
    id: str
    lang: str  # the language the answer should be in
    instruction: str
    input: str = ""
    reference: Any = None  # the number (MGSM), the gold answers (QA), the reference translation
    group: str = ""  # the table row it counts for: its language, or a translation direction ("en-de")

    def __post_init__(self) -> None:
        object.__setattr__(self, "group", self.group or self.lang)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    scale: float = 100.0  # shown as a percentage (rates) or as is (chrF++, BLEU)


@dataclass(frozen=True)
class GenerativeTask:
    """What it reads (`read`: prompts from the data folder, the languages, --confusion_prompts), how long and until
    what its answers run, how one answer is scored (`score`), and how a group of scored answers is summarised
    (`summarise`: each metric with a 95% interval)."""

    name: str
    read: Callable[[Path | None, list[str], str], list[Prompt]]
    score: Callable[[Prompt, str], dict[str, Any]]
    summarise: Callable[[list[dict[str, Any]]], dict[str, Any]]
    metrics: tuple[Metric, ...]
    max_new_tokens: int
    stop: Callable[[str], list[str]] = lambda lang: []
    notes: str = ""


Task = MultipleChoiceTask | GenerativeTask
