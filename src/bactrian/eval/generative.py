"""Generative tasks: prompts read from the files the datasets are published in, answered by each model, scored.

A task is what it reads (`read`: prompts per language), how long and until what its answers run, how one
answer is scored (`score`), and how a group of scored answers is summarised (`summarise`: each metric with a 95%
interval). Prompt formats follow lm-evaluation-harness where it has the task (MGSM, XQuAD, MLQA)."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import languages
from ..errors import ConfigError, DataError
from ..records import check_unique_ids, parsing, read_instructions, read_jsonl
from . import metrics
from .report import enclosing, wilson_interval
from .tasks import hub_rows


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
    name: str
    read: Callable[[Path | None, list[str], str], list[Prompt]]
    score: Callable[[Prompt, str], dict[str, Any]]
    summarise: Callable[[list[dict[str, Any]]], dict[str, Any]]
    metrics: tuple[Metric, ...]
    max_new_tokens: int
    stop: Callable[[str], list[str]] = lambda lang: []
    notes: str = ""


def _files(root: Path | None, pattern: str) -> list[Path]:
    return sorted(root.rglob(pattern)) if root is not None else []


def _rate(rows: list[dict[str, Any]], key: str, among: str | None = None) -> dict[str, Any]:
    """The share of rows whose `key` is true (among those where `among` is true), with its Wilson interval."""
    counted = [row for row in rows if among is None or row[among]]
    hits = sum(bool(row[key]) for row in counted)
    return {key: hits / len(counted) if counted else None, f"{key}_ci95": wilson_interval(hits, len(counted)),
            f"{key}_n": len(counted)}


def _mean(rows: list[dict[str, Any]], key: str, resamples: int = 1000) -> dict[str, Any]:
    """The mean of a per-row score in [0, 1], with a percentile bootstrap 95% interval (seed 0)."""
    values = [row[key] for row in rows]
    rng = random.Random(0)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(resamples))
    mean = sum(values) / len(values)
    interval = (means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1])
    return {key: mean, f"{key}_ci95": enclosing(mean, interval)}


# -- language confusion ------------------------------------------------------------------------------------------
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
    folders = [Path(source)] if source else sorted({path.parent for path in _files(root, "questions_*.jsonl")})
    if not folders:
        raise ConfigError("confusion: no prompts. Give --confusion_prompts (a Vicuna-80-style folder or a file of "
                          "instructions with lang) or a --data_dir holding questions_<Language>.jsonl files.")
    return [Prompt(row["id"], row["lang"], str(row["instruction"])) for row in vicuna_questions(folders[0], langs)]


def _harmonic_mean(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return a if b is None else b
    return 2 * a * b / (a + b) if a + b else 0.0


def _confusion_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """LPR, WPR (among the answers that pass at line level) and LCPR, their harmonic mean; LCPR's interval is
    the harmonic mean of theirs (it grows with both)."""
    summary = {"n": len(rows), **_rate(rows, "line_pass", "judged"), **_rate(rows, "word_pass", "line_pass")}
    summary["lcpr"] = _harmonic_mean(summary["line_pass"], summary["word_pass"])
    bounds = tuple(_harmonic_mean(line, word) or 0.0 for line, word
                   in zip(summary["line_pass_ci95"], summary["word_pass_ci95"]))
    summary["lcpr_ci95"] = bounds if summary["lcpr"] is None else enclosing(summary["lcpr"], bounds)
    return summary


CONFUSION = GenerativeTask(
    "confusion", _confusion_prompts, lambda prompt, answer: metrics.language_confusion(answer, prompt.lang),
    _confusion_summary, (Metric("lcpr", "language confusion pass rate %: harmonic mean of line and word level"),
                         Metric("line_pass", "line-level pass rate %"), Metric("word_pass", "word-level pass rate %")),
    max_new_tokens=256,
    notes="Marchisio et al. (2024): an answer passes at line level when every line of 5+ words is in the prompt's "
          "language, and at word level when those lines hold no run of words in another language; answers with "
          "no such line are not counted.")


# -- MGSM ---------------------------------------------------------------------------------------------------------
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
    files = _files(root, f"mgsm_{lang}.tsv")
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
        for lang in langs or [lang for lang in MGSM if _files(root, f"mgsm_{lang}.tsv")] or list(MGSM):
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
    import re

    def score(prompt: Prompt, answer: str) -> dict[str, Any]:
        strict = (metrics.regex_extract(answer, re.compile(_answer_pattern(prompt.lang))) if chain_of_thought
                  else answer.strip())
        flexible = metrics.regex_extract(answer, metrics.FLEXIBLE, group_select=-1)
        return {"strict": strict, "flexible": flexible,
                "strict_match": metrics.lm_eval_exact_match(strict, prompt.reference),
                "flexible_match": metrics.lm_eval_exact_match(flexible, prompt.reference)}
    return score


def _mgsm_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"n": len(rows), **_rate(rows, "flexible_match"), **_rate(rows, "strict_match")}


def _mgsm_task(name: str, chain_of_thought: bool) -> GenerativeTask:
    return GenerativeTask(
        name, _mgsm_reader(chain_of_thought), _mgsm_score(chain_of_thought), _mgsm_summary,
        (Metric("flexible_match", "exact match % (flexible-extract: the last number)"),
         Metric("strict_match", "exact match % (strict: " + ("the native 'The answer is N' sentence)"
                                                             if chain_of_thought else "the whole answer)"))),
        max_new_tokens=256, stop=lambda lang: [MGSM[lang][0], "</s>", "<|im_end|>"],
        notes="lm-evaluation-harness's mgsm_" + ("native_cot" if chain_of_thought else "direct") +
              ": its prompt, stop strings and answer extraction, zero-shot.")


# -- translation ----------------------------------------------------------------------------------------------------
NTREX_NAMES = {"aze-Latn": "az", "fas": "fa", "zho-CN": "zh", "mon": "mn", "nep": "ne", "pus": "ps", "swa": "sw",
               "lav": "lv", "est": "et", "tgl": "tl", "fil": "tl", "msa": None}  # others: the FLORES code's prefix


def ntrex_files(root: Path | None) -> tuple[Path | None, dict[str, Path]]:
    """NTREX-128's English source and its reference file per Bactrian-X language."""
    by_prefix = {lang.flores.split("_")[0]: lang.code for lang in languages.LANGUAGES}
    source, references = None, {}
    for path in _files(root, "newstest2019-*.txt"):
        name = path.name.removeprefix("newstest2019-").removesuffix(".txt")
        if name == "src.eng":
            source = path
        elif name.startswith("ref."):
            code = NTREX_NAMES.get(name[4:], by_prefix.get(name[4:]))
            if code and code not in references:
                references[code] = path
    return source, references


def flores_files(root: Path | None, split: str = "devtest") -> tuple[Path | None, dict[str, Path]]:
    """FLORES-200's English sentences and each language's (`<code>.<split>` files, line-aligned)."""
    by_code = {path.name.removesuffix(f".{split}"): path for path in _files(root, f"*.{split}")}
    return by_code.get("eng_Latn"), {lang.code: by_code[lang.flores] for lang in languages.LANGUAGES
                                     if lang.flores in by_code and lang.code != "en"}


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _translation_reader(files: Callable[[Path | None], tuple[Path | None, dict[str, Path]]], name: str):
    def read(root: Path | None, langs: list[str], _: str) -> list[Prompt]:
        source, references = files(root)
        if source is None or not references:
            raise DataError(f"{name}: no English source and reference files under --data_dir {root}.")
        english = _lines(source)
        prompts = []
        for lang in langs or sorted(references):
            if lang not in references:
                raise ConfigError(f"{name}: no reference file for {lang!r} under {root}.")
            other = _lines(references[lang])
            if len(other) != len(english):
                raise DataError(f"{references[lang]}: {len(other)} lines, but {source} has {len(english)}.")
            prompts += _directions(lang, english, other, name)
        return prompts
    return read


def _directions(lang: str, english: list[str], other: list[str], name: str) -> list[Prompt]:
    prompts = []
    for source_lang, target_lang, sources, targets in (("en", lang, english, other), (lang, "en", other, english)):
        instruction = (f"Translate the following text from {languages.get(source_lang).name} into "
                       f"{languages.get(target_lang).name}.")
        prompts += [Prompt(f"{name}-{source_lang}-{target_lang}-{index}", target_lang, instruction, text, reference,
                           f"{source_lang}-{target_lang}")
                    for index, (text, reference) in enumerate(zip(sources, targets)) if text.strip()]
    return prompts


def _translation_score(prompt: Prompt, answer: str) -> dict[str, Any]:
    from sacrebleu.metrics import CHRF

    return {"hypothesis": answer.strip(), "reference": prompt.reference, "target": prompt.lang,
            "sentence_chrf++": CHRF(word_order=2).sentence_score(answer.strip(), [prompt.reference]).score}


def _translation_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return metrics.translation_scores([row["hypothesis"] for row in rows], [row["reference"] for row in rows],
                                      rows[0]["target"])


def _translation_task(name: str, files) -> GenerativeTask:
    return GenerativeTask(name, _translation_reader(files, name), _translation_score, _translation_summary,
                          (Metric("chrf++", "chrF++", 1.0), Metric("bleu", "BLEU", 1.0)), max_new_tokens=192,
                          stop=lambda lang: ["\n"],
                          notes="sacrebleu corpus chrF++ and BLEU (13a; zh: zh; ja, th, my, km: char), 95% "
                                "intervals by sacrebleu's bootstrap; English to each language and back.")


# -- extractive QA ----------------------------------------------------------------------------------------------------
QA_LABELS = {  # lm-evaluation-harness's xquad prompts: context, question, answer
    "ar": ("سيا", "سؤال", "إجابة"), "de": ("Kontext", "Frage", "Antwort"),
    "el": ("Συμφραζόμενα", "Ερώτηση", "Απάντηση"), "en": ("Context", "Question", "Answer"),
    "es": ("Contexto", "Pregunta", "Respuesta"), "hi": ("प्रसंग", "सवाल", "उत्तर"),
    "ro": ("Context", "Întrebare", "Răspuns"),
    "ru": ("Контекст", "Вопрос", "Ответ"), "th": ("บริบท", "คำถาม", "คำตอบ"), "tr": ("Bağlam", "Soru", "Cevap"),
    "vi": ("Bối cảnh", "Câu hỏi", "Trả lời"), "zh": ("语境", "问题", "回答"),
}


def squad_prompts(path: Path, lang: str, task: str) -> list[Prompt]:
    """The questions of a SQuAD v1.1-format file (data[].paragraphs[].{context, qas[].{id, question, answers}})."""
    with parsing(path, "the file", "SQuAD JSON"):
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    context_label, question_label, answer_label = QA_LABELS.get(lang, QA_LABELS["en"])
    prompts = []
    for number, article in enumerate(articles):
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                with parsing(path, f"article {number}, question {qa.get('id', '?')}", "a SQuAD question"):
                    answers = [answer["text"] for answer in qa["answers"]]
                    prompts.append(Prompt(
                        f"{task}-{lang}-{qa['id']}", lang, f"{context_label}: {paragraph['context']}\n\n"
                        f"{question_label}: {qa['question']}\n\n{answer_label}:", reference=answers))
                if not answers:
                    raise DataError(f"{path}: article {number}, question {qa['id']}: field 'answers' is empty.")
    return prompts


def _qa_reader(task: str, pattern: str, hub: tuple[str, str]):
    def read(root: Path | None, langs: list[str], _: str) -> list[Prompt]:
        files = {lang: _files(root, pattern.format(lang=lang)) for lang in langs or QA_LABELS}
        prompts = []
        for lang in langs or [lang for lang, found in files.items() if found]:
            if files[lang]:
                prompts += squad_prompts(files[lang][0], lang, task)
            else:
                split = "validation" if task == "xquad" else "test"
                prompts += [Prompt(f"{task}-{lang}-{row['id']}", lang, *_hub_qa(row, lang))
                            for row in hub_rows(hub[0], hub[1].format(lang=lang), split)]
        if not prompts:
            raise DataError(f"{task}: no {pattern.format(lang='<lang>')} files under --data_dir {root}; name "
                            "--langs to load them from the hub.")
        return prompts
    return read


def _hub_qa(row: dict, lang: str) -> tuple[str, str, list[str]]:
    context_label, question_label, answer_label = QA_LABELS.get(lang, QA_LABELS["en"])
    return (f"{context_label}: {row['context']}\n\n{question_label}: {row['question']}\n\n{answer_label}:", "",
            list(row["answers"]["text"]))


def _qa_score(mlqa: bool):
    def score(prompt: Prompt, answer: str) -> dict[str, Any]:
        return {"prediction": answer.strip(), **metrics.qa_scores(answer.strip(), prompt.reference, prompt.lang, mlqa)}
    return score


def _qa_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"n": len(rows), **_mean(rows, "f1"), **_rate(rows, "em")}


def _qa_task(name: str, pattern: str, hub: tuple[str, str], mlqa: bool) -> GenerativeTask:
    return GenerativeTask(name, _qa_reader(name, pattern, hub), _qa_score(mlqa), _qa_summary,
                          (Metric("f1", "F1 %"), Metric("em", "exact match %")), max_new_tokens=32,
                          stop=lambda lang: ["\n"],
                          notes=("MLQA's" if mlqa else "SQuAD v1.1's") + " official normalisation; the best over "
                                "the gold answers; lm-evaluation-harness's xquad prompt.")


TASKS = {task.name: task for task in (
    CONFUSION, _mgsm_task("mgsm_direct", False), _mgsm_task("mgsm_cot", True),
    _translation_task("ntrex", ntrex_files), _translation_task("flores", flores_files),
    _qa_task("xquad", "xquad.{lang}.json", ("google/xquad", "xquad.{lang}"), False),
    _qa_task("mlqa", "test-context-{lang}-question-{lang}.json", ("facebook/mlqa", "mlqa.{lang}.{lang}"), True),
)}
