"""What translate and generate share: options, running many cached requests with a progress bar, a dry run
that prices the job before it starts, and per-language output files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import ConfigError
from ..fileio import atomic_write_bytes
from ..train.config import option
from .cache import RequestCache
from .client import ChatClient, Limits

log = logging.getLogger(__name__)


@dataclass
class EndpointConfig:
    model: str = option("", "Model name at the endpoint.")
    base_url: str = option("", "OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp's server, Ollama, bactrian serve).")
    api_key: str = option("", "API key (default: $OPENAI_API_KEY).")
    concurrency: int = option(16, "Requests in flight.")
    requests_per_minute: int = option(0, "Requests per minute (0: no limit).")
    tokens_per_minute: int = option(0, "Tokens per minute, estimated (0: no limit).")
    price_per_1m_tokens: float = option(0.0, "Price of 1M tokens, for --dry_run and the final report.")
    dry_run: bool = option(False, "Print what the job would send and cost, send nothing.")
    output_dir: str = option("", "Where the per-language JSONL files, the request cache and the report go.")


def make_client(config: EndpointConfig) -> ChatClient:
    if not config.base_url or not config.model:
        raise ConfigError("--base_url and --model are required.")
    api_key = config.api_key or os.environ.get("OPENAI_API_KEY", "")
    limits = Limits(concurrency=config.concurrency, requests_per_minute=config.requests_per_minute,
                    tokens_per_minute=config.tokens_per_minute)
    return ChatClient(config.base_url, api_key, RequestCache(Path(config.output_dir) / "requests.sqlite"), limits)


def dry_run_report(client: ChatClient, model: str, requests: list[list[dict[str, str]]], max_tokens: int,
                   price: float) -> dict[str, Any]:
    """Requests not in the cache yet, their characters and estimated tokens (4 characters a token), and cost."""
    from .cache import request_key

    todo = [messages for messages in requests
            if client.cache.get(request_key(engine="openai-chat", base_url=client.base_url, model=model,
                                            messages=messages, params=client_params(max_tokens))) is None]
    characters = sum(len(m["content"]) for messages in todo for m in messages)
    tokens = characters // 4 + max_tokens * len(todo)
    return {"requests": len(todo), "cached": len(requests) - len(todo), "characters": characters,
            "estimated_tokens": tokens, "estimated_cost": tokens * price / 1e6}


def client_params(max_tokens: int) -> dict[str, Any]:
    return {"temperature": 0, "max_tokens": max_tokens}


async def run_all(jobs: list[Callable[[], Awaitable[Any]]], description: str) -> list[Any]:
    bar = tqdm(total=len(jobs), desc=description, unit="req", disable=not sys.stderr.isatty())

    async def one(job):
        result = await job()
        bar.update(1)
        return result

    try:
        return await asyncio.gather(*(one(job) for job in jobs))
    finally:
        bar.close()


def write_by_language(folder: Path, rows: list[dict[str, Any]]) -> dict[str, int]:
    by_lang: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_lang[row["lang"]].append(row)
    for lang, lang_rows in by_lang.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in lang_rows)
        atomic_write_bytes(folder / f"{lang}.jsonl", text.encode("utf-8"))
    return {lang: len(lang_rows) for lang, lang_rows in sorted(by_lang.items())}
