"""What translate and generate share: options, running many cached requests with a progress bar, a dry run
that prices the job before it starts, and reading a job's input apart from its output folder (the per-language
output files are written by `bactrian.records`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..endpoints.cache import RequestCache
from ..endpoints.client import ChatClient, chat_client
from ..errors import ConfigError
from ..fileio import atomic_write_bytes
from ..records import read_rows
from .config import EndpointOptions

log = logging.getLogger(__name__)


REMOTE_ONLY = ("base_url", "api_key", "concurrency", "requests_per_minute", "tokens_per_minute",
               "price_per_1m_tokens", "dry_run", "batch_file", "batch_results")


def refuse_unused(config: Any, unused: tuple[str, ...]) -> None:
    """Options the chosen engine would ignore are an error, never silently dropped."""
    given = sorted(spec.name for spec in dataclasses.fields(config) if spec.name in unused
                   and getattr(config, spec.name) != _default(spec))
    if given:
        raise ConfigError(f"--engine {config.engine} does not use {', '.join('--' + name for name in given)}; "
                          "drop them or choose another engine.")


def _default(spec: dataclasses.Field) -> Any:
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default


def request_cache(config: EndpointOptions) -> RequestCache:
    if not config.output_dir:
        raise ConfigError("--output_dir is required.")
    return RequestCache(Path(config.output_dir) / "requests.sqlite")


def make_client(config: EndpointOptions) -> ChatClient:
    if not config.base_url or not config.model:
        raise ConfigError("--base_url and --model are required.")
    if "api.openai.com" in config.base_url and not (config.api_key or os.environ.get("OPENAI_API_KEY")):
        raise ConfigError("No API key: pass --api_key or set OPENAI_API_KEY.")
    return chat_client(config.base_url, config.api_key, request_cache(config), config)


def chat_params(max_tokens: int) -> dict[str, Any]:
    return {"temperature": 0, "max_tokens": max_tokens}


def run_chats(client: ChatClient, config: EndpointOptions, requests: list[list[dict[str, str]]], max_tokens: int,
              description: str) -> list[dict[str, Any] | None] | dict[str, Any]:
    """Answers to every request (None where one failed for good); or, for --dry_run / --batch_file, a summary
    of what would be sent."""
    params = chat_params(max_tokens)
    if config.batch_results:
        stored = client.store_batch_results(Path(config.batch_results))
        log.info("%d answers read from %s", stored, config.batch_results)
    todo = [messages for messages in requests if client.cache.get(client.key(config.model, messages, params)) is None]
    if config.dry_run:
        characters = sum(len(m["content"]) for messages in todo for m in messages)
        tokens = characters // 4 + max_tokens * len(todo)
        return {"requests": len(todo), "cached": len(requests) - len(todo), "characters": characters,
                "estimated_tokens": tokens, "estimated_cost": tokens * config.price_per_1m_tokens / 1e6}
    if config.batch_file:
        lines = {client.batch_line(config.model, messages, **params) for messages in todo}
        atomic_write_bytes(Path(config.batch_file), "".join(f"{line}\n" for line in sorted(lines)).encode("utf-8"))
        return {"batch_file": config.batch_file, "requests": len(lines)}
    return asyncio.run(_run(client, config.model, requests, params, description, bool(todo)))


async def _run(client: ChatClient, model: str, requests: list, params: dict, description: str,
               check_first: bool) -> list:
    try:
        if check_first:
            await client.check()
        return await run_all([lambda m=messages: client.chat(model, m, **params) for messages in requests],
                             description)
    finally:
        await client.close()


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


def read_job_input(input: str, output_dir: str) -> list[dict[str, Any]]:
    """The rows of a job's input, once its output folder is known to be apart from it."""
    refuse_overlap(input, output_dir)
    return read_rows(input)


def refuse_overlap(input: str, output_dir: str) -> None:
    """A job rewrites its output folder to hold exactly its own files, so that folder must not be, hold or lie
    inside its input."""
    if not (output_dir and Path(input).exists()):
        return
    source, out = Path(input).resolve(), Path(output_dir).resolve()
    if out.is_relative_to(source) or source.is_relative_to(out):
        raise ConfigError(f"--output_dir {output_dir} overlaps --input {input} (it is, holds or lies inside it), and "
                          "this job rewrites its output folder: write elsewhere.")
