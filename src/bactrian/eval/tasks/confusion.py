"""Language confusion (Marchisio et al. 2024): open questions (Vicuna-80 translations, or a file of instructions
with lang) answered freely, each answer judged for being written in the question's language at line and word
level; summarised as the paper's LPR, WPR and LCPR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ... import languages
from ...errors import ConfigError, DataError
from ...records import check_unique_ids, parsing, read_instructions, read_jsonl
from .. import metrics
from ..statistics import harmonic_mean, harmonic_mean_interval, rate
from .base import GenerativeTask, Metric, Prompt
from .registry import register
from .sources import files_below

FILE_LANGUAGES = {"Deutsch": "de"}  # Vicuna-80 translations name most files in English, German in German


def vicuna_questions(folder: Path, langs: list[str], per_lang: int = 0) -> list[dict[str, Any]]:
    """Questions in the Vicuna-80 format (questions_<Language>.jsonl with question_id, text, category), as rows
    of id, lang, instruction and category."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder of questions_<Language>.jsonl files.")
    questions, places = [], []
    for path in sorted(folder.glob("questions_*.jsonl")):
        name = path.stem.removeprefix("questions_")
        lang = FILE_LANGUAGES.get(name) or (languages.get(name).code if languages.is_known(name) else None)
        if lang is None or (langs and lang not in langs):
            continue
        for number, row in read_jsonl(path, limit=per_lang or None):
            with parsing(path, f"line {number}", "a question row"):
                questions.append({"id": f"{lang}-{row['question_id']}", "lang": lang, "instruction": row["text"],
                                  "category": row.get("category", "")})
            places.append((questions[-1]["id"], f"{path}: line {number}"))
    if not questions:
        raise DataError(f"{folder}: no questions_<Language>.jsonl files for {langs or 'any language'}.")
    check_unique_ids(places)
    return questions


def _confusion_prompts(root: Path | None, langs: list[str], source: str) -> list[Prompt]:
    if source and Path(source).is_file():
        rows = read_instructions(Path(source))
        missing = next((row for row in rows if not row.lang), None)
        if missing is not None:
            raise DataError(f"{source}: row {missing.id}: field 'lang' is needed to judge the answer's language.")
        return [Prompt(row.id, languages.get(row.lang).code, row.instruction, row.input) for row in rows
                if not langs or languages.get(row.lang).code in langs]
    folders = [Path(source)] if source else sorted({path.parent for path in files_below(root, "questions_*.jsonl")})
    if not folders:
        raise ConfigError("confusion: no prompts. Give --confusion_prompts (a Vicuna-80-style folder or a file of "
                          "instructions with lang) or a --data_dir holding questions_<Language>.jsonl files.")
    return [Prompt(row["id"], row["lang"], str(row["instruction"])) for row in vicuna_questions(folders[0], langs)]


def confusion_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """LPR, WPR (among the answers that pass at line level) and LCPR, their harmonic mean; LCPR's interval is
    the harmonic mean of theirs (it grows with both)."""
    summary = {"n": len(rows), **rate(rows, "line_pass", "judged"), **rate(rows, "word_pass", "line_pass")}
    summary["lcpr"] = harmonic_mean(summary["line_pass"], summary["word_pass"])
    summary["lcpr_ci95"] = harmonic_mean_interval(summary["lcpr"], summary["line_pass_ci95"],
                                                  summary["word_pass_ci95"])
    return summary


register(GenerativeTask(
    "confusion", _confusion_prompts, lambda prompt, answer: metrics.language_confusion(answer, prompt.lang),
    confusion_summary, (Metric("lcpr", "language confusion pass rate %: harmonic mean of line and word level"),
                        Metric("line_pass", "line-level pass rate %"), Metric("word_pass", "word-level pass rate %")),
    max_new_tokens=256,
    notes="Marchisio et al. (2024): an answer passes at line level when every line of 5+ words is in the prompt's "
          "language, and at word level when those lines hold no run of words in another language; answers with "
          "no such line are not counted."))
