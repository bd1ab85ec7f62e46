"""MGSM (grade-school maths in 11 languages) as lm-evaluation-harness's mgsm_direct and mgsm_native_cot: its
prompts, stop strings and answer extraction (strict and flexible), zero-shot, on the published TSV files or the
hub dataset."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError
from .. import metrics
from ..statistics import rate
from .base import GenerativeTask, Metric, Prompt
from .registry import register
from .sources import files_below, hub_rows

# lm-evaluation-harness's mgsm prompts (tasks/mgsm/utils.py): question prefix, direct and step-by-step answer
# prefixes, and the native chain of thought's answer sentence.
MGSM = {
    "bn": ("প্রশ্ন:", "Answer:", "ধাপে ধাপে উত্তর:", "The answer is"),
    "de": ("Frage:", "Antwort:", "Schritt-für-Schritt-Antwort:", "Die Antwort lautet"),
    "en": ("Question:", "Answer:", "Step-by-Step Answer:", "The answer is"),
    "es": ("Pregunta:", "Respuesta:", "Respuesta paso a paso:", "La respuesta es"),
    "fr": ("Question :", "Réponse :", "Réponse étape par étape :", "La réponse est"),
    "ru": ("Задача:", "Answer:", "Пошаговоерешение:", "Ответ —"),
    "sw": ("Swali:", "Answer:", "Jibu la Hatua kwa Hatua:", "Jibu ni"),
    "te": ("ప్రశ్న:", "Answer:", "దశలవారీగా సమాధానం:", "సమాధానం"),
    "th": ("โจทย์:", "Answer:", "คำตอบทีละขั้นตอน:", "คำตอบคือ"),
    "ja": ("問題：", "Answer:", "ステップごとの答え:", "答えは(\\-?[0-9\\.\\,]+)です。"),
    "zh": ("问题：", "Answer:", "逐步解答:", "答案是 (\\-?[0-9\\.\\,]+)。"),
}
NUMBER = r"(\-?[0-9\.\,]+)"


def mgsm_rows(root: Path | None, lang: str) -> list[tuple[str, str, str]]:
    """(where, question, answer number) of a language: the published TSV (no header), else the hub."""
    files = files_below(root, f"mgsm_{lang}.tsv")
    if not files:
        return [(f"row {index}", row["question"], str(row["answer_number"]))
                for index, row in enumerate(hub_rows("juletxara/mgsm", lang, "test"))]
    with open(files[0], encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    for number, row in enumerate(rows, 1):
        if len(row) != 2:
            raise DataError(f"{files[0]}: line {number}: expected question<TAB>answer, found {len(row)} field(s).")
    return [(f"{files[0]}: line {number}", question, answer) for number, (question, answer) in enumerate(rows, 1)]


def _mgsm_reader(chain_of_thought: bool):
    def read(root: Path | None, langs: list[str], _: str) -> list[Prompt]:
        for lang in langs:
            if lang not in MGSM:
                raise ConfigError(f"mgsm has no language {lang!r}; it has {', '.join(MGSM)}.")
        prompts = []
        for lang in langs or [lang for lang in MGSM if files_below(root, f"mgsm_{lang}.tsv")] or list(MGSM):
            question_prefix, direct, step_by_step, _ = MGSM[lang]
            answer_prefix = step_by_step if chain_of_thought else direct
            prompts += [Prompt(f"mgsm-{lang}-{index}", lang, f"{question_prefix} {question}\n{answer_prefix}",
                               reference=answer)
                        for index, (_, question, answer) in enumerate(mgsm_rows(root, lang))]
        return prompts
    return read


def _answer_pattern(lang: str) -> str:
    sentence = MGSM[lang][3]
    return sentence if "(" in sentence else f"{sentence} {NUMBER}"


def _mgsm_score(chain_of_thought: bool):
    def score(prompt: Prompt, answer: str) -> dict[str, Any]:
        strict = (metrics.regex_extract(answer, re.compile(_answer_pattern(prompt.lang))) if chain_of_thought
                  else answer.strip())
        flexible = metrics.regex_extract(answer, metrics.FLEXIBLE, group_select=-1)
        return {"strict": strict, "flexible": flexible,
                "strict_match": metrics.lm_eval_exact_match(strict, prompt.reference),
                "flexible_match": metrics.lm_eval_exact_match(flexible, prompt.reference)}
    return score


def _mgsm_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"n": len(rows), **rate(rows, "flexible_match"), **rate(rows, "strict_match")}


def _mgsm_task(name: str, chain_of_thought: bool) -> GenerativeTask:
    return GenerativeTask(
        name, _mgsm_reader(chain_of_thought), _mgsm_score(chain_of_thought), _mgsm_summary,
        (Metric("flexible_match", "exact match % (flexible-extract: the last number)"),
         Metric("strict_match", "exact match % (strict: " + ("the native 'The answer is N' sentence)"
                                                             if chain_of_thought else "the whole answer)"))),
        max_new_tokens=256, stop=lambda lang: [MGSM[lang][0], "</s>", "<|im_end|>"],
        notes="lm-evaluation-harness's mgsm_" + ("native_cot" if chain_of_thought else "direct") +
              ": its prompt, stop strings and answer extraction, zero-shot.")


register(_mgsm_task("mgsm_direct", False))
register(_mgsm_task("mgsm_cot", True))
