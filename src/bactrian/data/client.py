"""Chat requests to any OpenAI-compatible endpoint through the official async client: cached, a bounded number
in flight, requests- and tokens-per-minute limits, retries with exponential backoff and jitter for 429, 5xx,
timeouts and dropped connections (honouring Retry-After). A request that still fails is recorded, not fatal."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .cache import RequestCache, request_key

log = logging.getLogger(__name__)


@dataclass
class Limits:
    concurrency: int = 16
    requests_per_minute: int = 0  # 0: no limit
    tokens_per_minute: int = 0
    max_retries: int = 6
    base_delay: float = 0.5
    max_delay: float = 60.0


@dataclass
class Usage:
    requests_sent: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _MinuteWindow:
    """At most `limit` units in any 60 s window."""

    def __init__(self, limit: int):
        self.limit, self.events = limit, deque()

    async def take(self, amount: int = 1) -> None:
        if not self.limit:
            return
        while True:
            now = time.monotonic()
            while self.events and now - self.events[0][0] > 60:
                self.events.popleft()
            if sum(units for _, units in self.events) + amount <= self.limit or not self.events:
                self.events.append((now, amount))
                return
            await asyncio.sleep(60 - (now - self.events[0][0]) + 0.01)


@dataclass
class ChatClient:
    base_url: str
    api_key: str
    cache: RequestCache
    limits: Limits = field(default_factory=Limits)
    timeout: float = 600.0
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        import openai

        self.client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key or "none", max_retries=0,
                                         timeout=self.timeout)
        self.slots = asyncio.Semaphore(self.limits.concurrency)
        self.rpm = _MinuteWindow(self.limits.requests_per_minute)
        self.tpm = _MinuteWindow(self.limits.tokens_per_minute)

    async def chat(self, model: str, messages: list[dict[str, str]], **params: Any) -> dict[str, Any] | None:
        """The reply as {"content", "finish_reason", "usage"}, from the cache when stored; None if it failed."""
        key = request_key(engine="openai-chat", base_url=self.base_url, model=model, messages=messages, params=params)
        cached = self.cache.get(key)
        if cached is not None:
            self.usage.cached += 1
            return cached
        async with self.slots:
            estimate = sum(len(m["content"]) for m in messages) // 3 + int(params.get("max_tokens") or 256)
            for attempt in range(self.limits.max_retries + 1):
                await self.rpm.take()
                await self.tpm.take(estimate)
                try:
                    self.usage.requests_sent += 1
                    reply = await self.client.chat.completions.create(model=model, messages=messages, **params)
                except Exception as exc:  # noqa: BLE001 - classified below; anything unexpected is not retried
                    delay = self._retry_delay(exc, attempt)
                    if delay is None or attempt == self.limits.max_retries:
                        self.usage.failed += 1
                        self.cache.fail(key, f"{type(exc).__name__}: {exc}")
                        log.warning("request failed for good: %s", exc)
                        return None
                    await asyncio.sleep(delay)
                    continue
                result = {"content": reply.choices[0].message.content or "",
                          "finish_reason": reply.choices[0].finish_reason,
                          "usage": reply.usage.model_dump() if reply.usage else {}}
                self.usage.prompt_tokens += result["usage"].get("prompt_tokens", 0)
                self.usage.completion_tokens += result["usage"].get("completion_tokens", 0)
                self.cache.put(key, result)
                return result
        return None

    def _retry_delay(self, exc: Exception, attempt: int) -> float | None:
        import openai

        retryable = isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                                     openai.InternalServerError)) or \
            (isinstance(exc, openai.APIStatusError) and exc.status_code >= 500)
        if not retryable:
            return None
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        retry_after = headers.get("retry-after")
        if retry_after:
            try:
                return min(float(retry_after), self.limits.max_delay)
            except ValueError:
                pass
        backoff = min(self.limits.max_delay, self.limits.base_delay * 2 ** attempt)
        return backoff * (0.5 + random.random() / 2)

    async def close(self) -> None:
        await self.client.close()
