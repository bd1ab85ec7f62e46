"""Extractive QA: XQuAD and MLQA in the SQuAD v1.1 JSON format (or their hub datasets), with
lm-evaluation-harness's xquad prompt; exact match and F1 by SQuAD's or MLQA's official normalisation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...records import parsing
from .. import metrics
from ..statistics import bootstrap_mean, rate
from .base import GenerativeTask, Metric, Prompt
from .registry import register
from .sources import files_below, hub_rows

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
        files = {lang: files_below(root, pattern.format(lang=lang)) for lang in langs or QA_LABELS}
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
    return {"n": len(rows), **bootstrap_mean(rows, "f1"), **rate(rows, "em")}


def _qa_task(name: str, pattern: str, hub: tuple[str, str], mlqa: bool) -> GenerativeTask:
    return GenerativeTask(name, _qa_reader(name, pattern, hub), _qa_score(mlqa), _qa_summary,
                          (Metric("f1", "F1 %"), Metric("em", "exact match %")), max_new_tokens=32,
                          stop=lambda lang: ["\n"],
                          notes=("MLQA's" if mlqa else "SQuAD v1.1's") + " official normalisation; the best over "
                                "the gold answers; lm-evaluation-harness's xquad prompt.")


register(_qa_task("xquad", "xquad.{lang}.json", ("google/xquad", "xquad.{lang}"), False))
register(_qa_task("mlqa", "test-context-{lang}-question-{lang}.json", ("facebook/mlqa", "mlqa.{lang}.{lang}"), True))
