"""What a caller asks of a decoder and what it gets back, free of torch (so `serve --upstream`, which loads no
weights, and every command's `--help` stay light): the sampling settings, the request, the pieces of its
output, and the rules that cut an answer's text at a stop string."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

GREEDY_BELOW = 1e-5  # temperatures below this decode greedily (vLLM's rule): dividing by them overflows


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    num_beams: int = 1

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


GUARD_RETRIES = 2  # re-decodes of one drifting line or sentence before it is kept and marked


@dataclass
class LanguageGuard:
    """Keep an answer in `lang` while it is decoded (`guard.py`): each line or sentence is checked as it
    completes, and one that reads as another language is taken back and decoded again with the drift
    discouraged, at most `max_retries` times, then kept and marked."""

    lang: str
    max_retries: int = GUARD_RETRIES


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str = "base"
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_text: str = ""  # the rendered prompt, for backends that take text (serve --upstream)
    guard: LanguageGuard | None = None  # None: the answer is not checked


@dataclass
class Delta:
    """A piece of a request's output: new text, and when it is done, why (stop, length, cancelled or error)."""

    index: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    status: int = 500  # the HTTP status an error maps to
    guard: dict[str, Any] | None = None  # on the last delta of a guarded request: what the guard did (`guard.py`)
    speculation: dict[str, int] | None = None  # on the last delta of a request that guessed: guessed and kept tokens


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text before the first stop string it holds, and whether it held one."""
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    return (text[: min(positions)], True) if positions else (text, False)


def safe_prefix(text: str, stops: list[str]) -> str:
    """Text that can be shown now: no half-decoded character, no possible start of a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return text[: len(text) - hold]
