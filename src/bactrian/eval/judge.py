"""`bactrian eval judge`: the paper's pairwise protocol. Two models answer multilingual questions; a judge on
any OpenAI-compatible endpoint scores both answers 0-10 for helpfulness, relevance, accuracy and detail, told
that the user speaks only the question's language, twice with the order swapped. Also, without any judge,
the share of answers written in the question's language. Requests are cached, so a rerun resumes."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

from .. import languages
from ..endpoints.cache import RequestCache
from ..endpoints.client import ChatClient, chat_client
from ..errors import ConfigError
from ..fileio import atomic_write_bytes, atomic_write_json, holds_output
from ..infer.answers import answer_prompts, read_answers
from ..infer.engine import build_engine
from ..infer.requests import SamplingParams
from ..langid import detect_language
from ..records import Instruction
from .config import JudgeConfig
from .pairwise import both_orders
from .tasks.confusion import vicuna_questions


async def _verdicts(config: JudgeConfig, questions: list[dict], answers: dict, client: ChatClient) -> list[dict]:
    async def judge(question: dict) -> list[dict]:
        a, b = answers[(question["id"], config.model_a)], answers[(question["id"], config.model_b)]
        verdicts = await both_orders(client, config, question["instruction"], a, b, question["lang"])
        return [{"id": question["id"], "swapped": v.swapped, "scores": v.scores, "verdict": v.text} for v in verdicts]

    return [verdict for pair in await asyncio.gather(*map(judge, questions)) for verdict in pair]


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
    questions = vicuna_questions(Path(config.questions_dir), languages.parse_langs(config.lang),
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
    """Both models' answer to every question (generated once, resumed)."""
    engine = build_engine(config)
    for model in (config.model_a, config.model_b):
        engine.catalog.check_loaded(model, "--model")
    prompts = [Instruction(q["id"], q["lang"], q["instruction"], q.get("input", "")) for q in questions]
    answers_file = out / "answers.jsonl"
    greedy = SamplingParams(max_new_tokens=config.max_new_tokens)
    answer_prompts(engine, prompts, [config.model_a, config.model_b], greedy, answers_file)
    return {key: row["output"] for key, row in read_answers(answers_file).items()}


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
