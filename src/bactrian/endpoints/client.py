"""Requests to remote endpoints for jobs of many of them: cached, a bounded number in flight, requests- and
tokens-per-minute limits, retries with exponential backoff and jitter for 429, 5xx, timeouts and dropped
connections (honouring Retry-After). A request that still fails is recorded, not fatal. `ChatClient` speaks
OpenAI's chat API through the official async client; `Requester` serves any other API (Google, DeepL)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from ..errors import EndpointError
from ..records import parsing, read_jsonl
from .cache import RequestCache, request_key

log = logging.getLogger(__name__)


@dataclass
class RateLimits:
    concurrency: int = 16
    requests_per_minute: int = 0  # 0: no limit
    tokens_per_minute: int = 0
    max_retries: int = 6
    base_delay: float = 0.5
    max_delay: float = 60.0

    @classmethod
    def of(cls, options: Any) -> RateLimits:
        """The limits a verb's options set (concurrency, requests_per_minute, tokens_per_minute)."""
        return cls(concurrency=options.concurrency, requests_per_minute=options.requests_per_minute,
                   tokens_per_minute=options.tokens_per_minute)


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


def retry_delay(exc: Exception, attempt: int, limits: RateLimits) -> float | None:
    """Seconds to wait before retrying, or None when the error is not worth retrying."""
    import httpx
    import openai

    status = _status(exc)
    transient = isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, httpx.TransportError))
    if not transient and not (status == 429 or (status is not None and status >= 500)):
        return None
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    waited = retry_after_seconds(headers.get("retry-after"), limits.max_delay)
    if waited is not None:
        return waited
    return min(limits.max_delay, limits.base_delay * 2 ** attempt) * (0.5 + random.random() / 2)


def retry_after_seconds(value: str | None, most: float) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds within [0, most]; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), most) if math.isfinite(seconds) else None


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)


def stops_the_job(exc: Exception) -> str | None:
    """The endpoint's message when an error means no later request can succeed either (a refused key, a
    permission denied, an exhausted quota): the job stops there instead of failing every row."""
    status, body = _status(exc), _error_body(exc)
    code = (body.get("code") or body.get("type")) if isinstance(body, dict) else None
    if status in (401, 403) or code == "insufficient_quota":
        message = body.get("message") if isinstance(body, dict) else None
        return f"{status}: {message or exc}"
    return None


def _error_body(exc: Exception) -> dict[str, Any] | None:
    """The error object an endpoint answered with (OpenAI's client keeps it; httpx has the response)."""
    body = getattr(exc, "body", None)
    if body is None and getattr(exc, "response", None) is not None:
        try:
            body = exc.response.json()
        except (ValueError, AttributeError):
            return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return body if isinstance(body, dict) else None


@dataclass
class Requester:
    """Cached, limited, retried execution of any request: `run(key, send, estimate)`."""

    cache: RequestCache
    limits: RateLimits = field(default_factory=RateLimits)
    usage: Usage = field(default_factory=Usage)
    secrets: list[str] = field(default_factory=list)  # API keys: never stored, logged or raised

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.limits.concurrency)
        self.rpm = _MinuteWindow(self.limits.requests_per_minute)
        self.tpm = _MinuteWindow(self.limits.tokens_per_minute)

    async def run(self, key: str, send: Callable[[], Awaitable[dict[str, Any]]], estimate: int) -> dict | None:
        cached = self.cache.get(key)
        if cached is not None:
            self.usage.cached += 1
            return cached
        async with self.slots:
            for attempt in range(self.limits.max_retries + 1):
                await self.rpm.take()
                await self.tpm.take(estimate)
                try:
                    self.usage.requests_sent += 1
                    result = await send()
                except Exception as exc:  # noqa: BLE001 - classified by retry_delay; others fail this request
                    fatal = stops_the_job(exc)
                    if fatal:
                        raise EndpointError(f"The endpoint refused the job ({self.redact(fatal)}); finished "
                                            "requests are kept and a rerun continues from there.") from None
                    delay = retry_delay(exc, attempt, self.limits)
                    if delay is None or attempt == self.limits.max_retries:
                        self.usage.failed += 1
                        message = self.redact(f"{type(exc).__name__}: {exc}")
                        self.cache.fail(key, message)
                        log.warning("request failed for good: %s", message)
                        return None
                    await asyncio.sleep(delay)
                    continue
                self.cache.put(key, result)
                return result
        return None


class ChatClient(Requester):
    def __init__(self, base_url: str, api_key: str, cache: RequestCache, limits: RateLimits | None = None,
                 timeout: float = 600.0):
        import openai

        super().__init__(cache, limits or RateLimits(), secrets=[api_key])
        self.base_url = base_url
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0,
                                         timeout=timeout)

    def key(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        return request_key(engine="openai-chat", base_url=self.base_url, model=model, messages=messages,
                           params=params)

    async def check(self) -> None:
        """Fail fast, before spending anything, on an endpoint that cannot be reached or refuses the key."""
        import openai

        try:
            await self.client.models.list()
        except openai.AuthenticationError as exc:
            raise EndpointError(self.redact(f"{self.base_url} refused the API key ({exc}).")) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise EndpointError(self.redact(f"{self.base_url} cannot be reached ({exc}).")) from None
        except openai.APIStatusError:
            pass  # some servers have no /models; they answer, which is what matters here

    async def chat(self, model: str, messages: list[dict[str, str]], **params: Any) -> dict[str, Any] | None:
        """The reply as {"content", "finish_reason", "usage"}, from the cache when stored; None if it failed."""

        async def send() -> dict[str, Any]:
            reply = await self.client.chat.completions.create(model=model, messages=messages, **params)
            return {"content": reply.choices[0].message.content or "",
                    "finish_reason": reply.choices[0].finish_reason,
                    "usage": reply.usage.model_dump() if reply.usage else {}}

        estimate = sum(len(m["content"]) for m in messages) // 3 + int(params.get("max_tokens") or 256)
        sent_before = self.usage.requests_sent
        result = await self.run(self.key(model, messages, params), send, estimate)
        if result is not None and self.usage.requests_sent > sent_before:
            self.usage.prompt_tokens += result["usage"].get("prompt_tokens", 0)
            self.usage.completion_tokens += result["usage"].get("completion_tokens", 0)
        return result

    def batch_line(self, model: str, messages: list[dict[str, str]], **params: Any) -> str | None:
        """A request in the OpenAI Batch API format (also vLLM's run-batch), or None if its answer is stored."""
        key = self.key(model, messages, params)
        if self.cache.get(key) is not None:
            return None
        return json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": model, "messages": messages, **params}}, ensure_ascii=False)

    def store_batch_results(self, path: Path) -> int:
        """Read a Batch API results file into the cache; returns how many answers it held."""
        stored = 0
        for number, row in read_jsonl(path):
            with parsing(path, f"line {number}", "a Batch API result"):
                response = row.get("response") or {}
                if row.get("error") or response.get("status_code") != 200:
                    self.cache.fail(row["custom_id"], json.dumps(row.get("error") or response))
                    continue
                body = response["body"]
                choice = body["choices"][0]
                self.cache.put(row["custom_id"], {"content": choice["message"]["content"] or "",
                                                  "finish_reason": choice.get("finish_reason"),
                                                  "usage": body.get("usage") or {}})
                stored += 1
        return stored

    async def close(self) -> None:
        await self.client.close()


def chat_client(base_url: str, api_key: str, cache: RequestCache, options: Any) -> ChatClient:
    """The client of an OpenAI-compatible endpoint, limited as `options` say; the key defaults to
    $OPENAI_API_KEY."""
    return ChatClient(base_url, api_key or os.environ.get("OPENAI_API_KEY", ""), cache, RateLimits.of(options))
