"""Pairwise judging, the paper's protocol, in one home (`eval judge` compares two models; `data prefs` compares a
model's answer with the teacher's): a judge on an OpenAI-compatible endpoint scores both answers 0-10, told that
the user speaks only the question's language, twice with the order swapped."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from .. import languages
from ..endpoints.client import ChatClient
from .config import JudgeOptions

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


@dataclass
class Verdict:
    """One order's verdict: the scores of (a, b) whichever came first, and the judge's text."""

    swapped: bool  # b was shown first
    scores: tuple[float, float] | None
    text: str | None


async def both_orders(client: ChatClient, options: JudgeOptions, question: str, a: str, b: str,
                      lang: str) -> tuple[Verdict, Verdict]:
    """The judge's verdict on answers `a` and `b` to `question`, a first, then b first."""
    return tuple(await asyncio.gather(*(_verdict(client, options, question, a, b, lang, swapped)
                                        for swapped in (False, True))))


async def _verdict(client: ChatClient, options: JudgeOptions, question: str, a: str, b: str, lang: str,
                   swapped: bool) -> Verdict:
    first, second = (b, a) if swapped else (a, b)
    prompt = VERDICT.format(question=question, first=first, second=second, language=languages.get(lang).name)
    reply: dict[str, Any] | None = await client.chat(
        options.judge_model, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        temperature=0, max_tokens=options.judge_max_tokens)
    scores = parse_scores(reply["content"]) if reply else None
    if scores and swapped:
        scores = (scores[1], scores[0])
    return Verdict(swapped, scores, reply["content"] if reply else None)


def agreed_winner(verdicts: tuple[Verdict, Verdict]) -> str:
    """`a` or `b` when both orders score it higher, else `tie` (mixed, equal or unparsed verdicts)."""
    if any(verdict.scores is None for verdict in verdicts):
        return "tie"
    if all(a > b for a, b in (verdict.scores for verdict in verdicts)):
        return "a"
    return "b" if all(a < b for a, b in (verdict.scores for verdict in verdicts)) else "tie"
