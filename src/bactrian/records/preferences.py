"""Preference rows: ours (`instruction`/`input` with `chosen` and `rejected` answers) and TRL's (`prompt` with
`chosen` and `rejected`, plain text or conversational lists of {role, content} messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from .fields import text_field


def is_preference(row: dict[str, Any]) -> bool:
    return "chosen" in row or "rejected" in row


def preference_fields(row: dict[str, Any], source: Path | str, where: str) -> tuple[str, str, str, str]:
    """(instruction, input, chosen, rejected) of a preference row. TRL's conversational format becomes the last
    user message as the instruction, earlier ones before it."""
    if "instruction" in row:
        instruction = text_field(row, "instruction", source, where, required=True)
        text_input = text_field(row, "input", source, where, required=False)
    elif isinstance(row.get("prompt"), list):
        instruction, text_input = _user_text(row["prompt"], source, where), ""
    else:
        instruction, text_input = text_field(row, "prompt", source, where, required=True), ""
    answers = []
    for field in ("chosen", "rejected"):
        value = row.get(field)
        if isinstance(value, list):
            answers.append(_assistant_text(value, field, source, where))
        else:
            answers.append(text_field(row, field, source, where, required=True))
    return instruction, text_input, answers[0], answers[1]


def _messages(value: list, field: str, source: Path | str, where: str) -> list[dict]:
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in value):
        raise DataError(f"{source}: {where}: field '{field}' must be a list of {{role, content}} messages.")
    return value


def _user_text(value: list, source: Path | str, where: str) -> str:
    messages = [m["content"] for m in _messages(value, "prompt", source, where) if m["role"] in ("system", "user")]
    if not messages:
        raise DataError(f"{source}: {where}: field 'prompt' has no user message.")
    return "\n\n".join(messages)


def _assistant_text(value: list, field: str, source: Path | str, where: str) -> str:
    replies = [m["content"] for m in _messages(value, field, source, where) if m["role"] == "assistant"]
    if not replies or not "".join(replies).strip():
        raise DataError(f"{source}: {where}: field '{field}' has no assistant message.")
    return "\n\n".join(replies)
