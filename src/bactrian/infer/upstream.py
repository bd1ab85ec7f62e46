"""`serve --upstream URL`: generation by another OpenAI-compatible server that serves the same adapters by name
(vLLM with `--enable-lora --lora-modules`, llama.cpp's server, LoRAX, another `bactrian serve`).

This server keeps what only it offers (the `auto` route by language, the adapter names and the prompt templates
from each `bactrian.json`, its API key and bounds) and forwards each request as a streamed `/v1/completions`
call with the prompt it rendered; the upstream answers under the adapter's name (`base` maps to
`--upstream_base_name`). A client that goes away closes the upstream stream, which stops the upstream's work."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .requests import Delta, Request
from .routing import BASE


class Upstream:
    """A `protocols.Backend` that forwards each request to another OpenAI-compatible server."""

    def __init__(self, url: str, api_key: str = "", base_name: str = BASE, timeout_s: float = 600):
        self.url = url.rstrip("/")
        self.base_name = base_name
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers,
                                        timeout=httpx.Timeout(timeout_s, connect=10))

    def submit(self, request: Request) -> AsyncIterator[Delta]:
        return self._stream(request)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "upstream": self.url, "decoding": {"upstream": self.url}}

    def body(self, request: Request) -> dict[str, Any]:
        params = request.params
        body: dict[str, Any] = {"model": self.base_name if request.adapter == BASE else request.adapter,
                                "prompt": request.prompt_text, "max_tokens": params.max_new_tokens,
                                "temperature": params.temperature, "top_p": params.top_p, "stream": True,
                                "stream_options": {"include_usage": True}}
        extras = {"stop": params.stop, "seed": params.seed, "top_k": params.top_k}
        return {**body, **{key: value for key, value in extras.items() if value}}

    async def _stream(self, request: Request) -> AsyncIterator[Delta]:
        """Text deltas as the upstream sends them; the last one carries the finish reason and token count."""
        finish, chunks, usage = None, 0, None
        try:
            async with self.client.stream("POST", "/completions", json=self.body(request)) as response:
                if response.status_code != 200:
                    await response.aread()
                    yield _failed(response.status_code, _message(response))
                    return
                async for event in _events(response):
                    if "error" in event:
                        yield _failed(502, str(event["error"].get("message", event["error"])))
                        return
                    usage = (event.get("usage") or {}).get("completion_tokens", usage)
                    for choice in event.get("choices") or []:
                        chunks += 1
                        finish = choice.get("finish_reason") or finish
                        if choice.get("text"):
                            yield Delta(0, choice["text"])
        except httpx.HTTPError as exc:
            yield _failed(502, f"the upstream server {self.url} failed: {exc}")
            return
        yield Delta(0, "", finish or "stop", usage if usage is not None else chunks)


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        if line[6:].strip() == "[DONE]":
            return
        yield json.loads(line[6:])


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        detail = error.get("message") if isinstance(error, dict) else error or response.text
    except ValueError:
        detail = response.text
    return f"the upstream server answered {response.status_code}: {str(detail)[:500]}"


def _failed(status: int, message: str) -> Delta:
    return Delta(0, "", "error", error=message, status=status)
