"""`bactrian eval judge`: the paper's pairwise protocol. Two models answer multilingual questions; a judge on
any OpenAI-compatible endpoint scores both answers 0-10 for helpfulness, relevance, accuracy and detail, told
that the user speaks only the question's language, twice with the order swapped. Also, without any judge,
the share of answers written in the question's language. Requests are cached, so a rerun resumes."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from .. import languages
from ..endpoints.cache import RequestCache
from ..endpoints.client import ChatClient, chat_client
from ..errors import ConfigError
from ..fileio import atomic_write_bytes, atomic_write_json, holds_output
from ..infer import generate as answering
from ..infer.config import GenerateConfig
from ..infer.engine import build_engine
from ..langid import detect_language
from ..records import read_jsonl, write_jsonl_rows
from .config import JudgeConfig
from .tasks.confusion import vicuna_questions

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
VERDICT = (
    "[Question]\n{question}\n\n[The Start of Assistant 1's Answer]\n{first}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{second}\n\n[The End of Assistant 2's Answer]\n\n[System]\n"
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user only speaks {language}: an answer not written in {language} does not "
    "help them and must be scored low.\nPlease rate the helpfulness, relevance, accuracy and level of detail of "
    "their responses. Each assistant receives an overall score on a scale of 0 to 10, where a higher score "
    "indicates better overall performance.\nPlease first output a single line containing only two values "
    "indicating the scores for Assistant 1 and 2, respectively. The two scores are separated by a space. In the "
    "subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias "
    "and ensuring that the order in which the responses were presented does not affect your judgment."
)
def parse_scores(text: str) -> tuple[float, float] | None:
    """The two scores of a verdict: "9/10 ... 4/10", else a first line of two numbers, else the first two
    numbers in 0-10 (not counting the "1" and "2" of "Assistant 1", "Assistant 2")."""
    number = r"\d+(?:\.\d+)?"
    out_of_ten = re.findall(rf"({number})\s*/\s*10\b", text)
    lines = text.strip().splitlines()
    first_line = re.findall(number, lines[0]) if lines else []
    anywhere = re.findall(number, re.sub(r"Assistant\s*\d", "", text))
    for candidates in (out_of_ten, first_line if len(first_line) == 2 else [], anywhere):
        scores = [float(n) for n in candidates if 0 <= float(n) <= 10][:2]
        if len(scores) == 2:
            return scores[0], scores[1]
    return None


async def _verdicts(config: JudgeConfig, questions: list[dict], answers: dict, client: ChatClient) -> list[dict]:
    async def judge(question: dict, swapped: bool) -> dict:
        a, b = answers[(question["id"], config.model_a)], answers[(question["id"], config.model_b)]
        first, second = (b, a) if swapped else (a, b)
        prompt = VERDICT.format(question=question["instruction"], first=first, second=second,
                                language=languages.get(question["lang"]).name)
        reply = await client.chat(config.judge_model, [{"role": "system", "content": SYSTEM},
                                                        {"role": "user", "content": prompt}],
                                  temperature=0, max_tokens=config.judge_max_tokens)
        scores = parse_scores(reply["content"]) if reply else None
        if scores and swapped:
            scores = (scores[1], scores[0])
        return {"id": question["id"], "swapped": swapped, "scores": scores,
                "verdict": reply["content"] if reply else None}

    return await asyncio.gather(*(judge(q, swapped) for q in questions for swapped in (False, True)))


def tally(questions: list[dict], verdicts: list[dict], answers: dict, config: JudgeConfig) -> dict[str, Any]:
    by_question = defaultdict(list)  # a pair counts as judged only when both orders were scored
    for verdict in verdicts:
        if verdict["scores"]:
            by_question[verdict["id"]].append(verdict["scores"])
    outcome: dict[str, dict[str, dict[str, int]]] = {"language": {}, "category": {}}
    fidelity: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for question in questions:
        scored = by_question.get(question["id"], [])
        if len(scored) == 2:
            a = sum(s[0] for s in scored) / len(scored)
            b = sum(s[1] for s in scored) / len(scored)
            result = "wins" if a > b else "losses" if a < b else "ties"
        else:
            result = "unjudged"
        for axis in ("language", "category"):
            key = question["lang"] if axis == "language" else question["category"]
            counts = outcome[axis].setdefault(key, {"wins": 0, "ties": 0, "losses": 0, "unjudged": 0})
            counts[result] += 1
        for model in (config.model_a, config.model_b):
            fidelity[question["lang"]][model].append(detect_language(answers[(question["id"], model)]) ==
                                                     question["lang"])
    return {"a": config.model_a, "b": config.model_b, "outcome": outcome,
            "language_fidelity": {lang: {model: sum(v) / len(v) for model, v in per_model.items()}
                                  for lang, per_model in fidelity.items()}}


def markdown(report: dict[str, Any]) -> str:
    a, b = report["a"], report["b"]
    lines = [f"# {a} vs {b}, judged pairwise (both orders)", ""]
    for axis in ("language", "category"):
        lines += [f"## per {axis}", "", f"| {axis} | {a} wins | ties | {b} wins | unjudged |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for key, counts in sorted(report["outcome"][axis].items()):
            lines.append(f"| {key} | {counts['wins']} | {counts['ties']} | {counts['losses']} | {counts['unjudged']} |")
        lines.append("")
    lines += ["## answers in the question's language (no judge needed)", "", f"| language | {a} | {b} |",
              "| --- | ---: | ---: |"]
    for lang, shares in sorted(report["language_fidelity"].items()):
        lines.append(f"| {lang} | {100 * shares[a]:.0f}% | {100 * shares[b]:.0f}% |")
    cost = report["judge"]
    lines += ["", f"Judge: {cost['requests_sent']} requests sent, {cost['cached']} from cache, {cost['failed']} "
                  f"failed; {cost['prompt_tokens']} prompt + {cost['completion_tokens']} completion tokens; "
                  f"cost {cost['cost']:.4f}."]
    return "\n".join(lines) + "\n"


@holds_output("output_dir", "eval judge")
def judge(config: JudgeConfig) -> dict[str, Any]:
    if not config.model_b or not config.judge_base_url:
        raise ConfigError("--model_b and --judge_base_url are required.")
    out = Path(config.output_dir)
    questions = vicuna_questions(Path(config.questions_dir), languages.parse_langs(config.langs),
                                 config.questions_per_lang)
    cache = RequestCache(out / "judge-cache.sqlite")
    try:
        asyncio.run(_preflight(config, cache))  # a refused key or a dead endpoint stops us before any answer
        answers = _answers(config, questions, out)
        report = asyncio.run(_judge_all(config, questions, answers, cache))
    finally:
        cache.close()
    atomic_write_json(out / "judge.json", report)
    atomic_write_bytes(out / "judge.md", markdown(report).encode("utf-8"))
    return report


def _answers(config: JudgeConfig, questions: list[dict[str, Any]], out: Path) -> dict[tuple[str, str], str]:
    """Both models' answer to every question (generated once, resumed like `generate`)."""
    write_jsonl_rows(out / "questions.jsonl", questions)
    engine = build_engine(config)
    for model in (config.model_a, config.model_b):
        if model not in engine.model_names:
            raise ConfigError(f"--model {model}: not loaded. Loaded: {', '.join(engine.model_names)}.")
    answers_file = out / "answers.jsonl"
    answering.generate(GenerateConfig(input_file=str(out / "questions.jsonl"), output_file=str(answers_file),
                                 adapter=[config.model_a, config.model_b], max_new_tokens=config.max_new_tokens),
                  engine)
    return {(row["id"], row["model"]): row["output"] for _, row in read_jsonl(answers_file)}


def _judge_client(config: JudgeConfig, cache: RequestCache) -> ChatClient:
    return chat_client(config.judge_base_url, config.judge_api_key, cache, config)


async def _preflight(config: JudgeConfig, cache: RequestCache) -> None:
    client = _judge_client(config, cache)
    try:
        await client.check()
    finally:
        await client.close()


async def _judge_all(config: JudgeConfig, questions: list[dict], answers: dict, cache: RequestCache) -> dict:
    client = _judge_client(config, cache)
    try:
        verdicts = await _verdicts(config, questions, answers, client)
    finally:
        await client.close()
    report = tally(questions, verdicts, answers, config)
    usage = client.usage
    cost = (usage.prompt_tokens * config.price_input_per_1m
            + usage.completion_tokens * config.price_output_per_1m) / 1e6
    report["judge"] = {**vars(usage), "cost": cost, "model": config.judge_model}
    report["verdicts"] = verdicts
    return report
