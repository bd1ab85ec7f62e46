"""`bactrian serve`: an OpenAI-compatible HTTP server (chat completions, completions, models) over the engine.
Concurrent requests are batched; `model` picks the adapter (`base`, an adapter name, or `auto`)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import Batcher
from .config import ServeConfig
from .engine import Engine, Request, SamplingParams, build_engine

log = logging.getLogger(__name__)


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content={"error": {
            "message": self.message, "type": self.type, "param": self.param, "code": self.code}})


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _Common(BaseModel):
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = 1
    stream_options: dict[str, Any] | None = None


class ChatCompletionRequest(_Common):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)


def create_app(engine: Engine, api_key: str | None = None, max_batch: int = 64, wait_ms: float = 5.0) -> FastAPI:
    app = FastAPI(title="bactrian", version="1")
    batcher = Batcher(engine, max_batch=max_batch, wait_ms=wait_ms)
    created = int(time.time())

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: HttpRequest, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"][1:]) or None
        return OpenAIError(400, f"{param or 'body'}: {first['msg']}", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        return OpenAIError(exc.status_code, str(exc.detail), type="invalid_request_error").response()

    @app.middleware("http")
    async def _authenticate(request: HttpRequest, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return OpenAIError(401, "Invalid or missing API key (Authorization: Bearer KEY).",
                                   type="authentication_error", code="invalid_api_key").response()
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "bactrian"} for name in engine.model_names]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, http: HttpRequest):
        adapter, _ = _adapter(engine, body.model, body.messages[-1].content)
        prompt_ids = engine.encode_chat(adapter, [m.model_dump() for m in body.messages])
        request = _request(engine, body, prompt_ids, adapter, default_max=None)
        return await _respond(batcher, body, request, "chat.completion")

    @app.post("/v1/completions")
    async def complete(body: CompletionRequest, http: HttpRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise OpenAIError(400, "Only one prompt per request is supported.", param="prompt")
        adapter, _ = _adapter(engine, body.model, prompts[0])
        request = _request(engine, body, engine.encode(prompts[0]), adapter, default_max=16)
        return await _respond(batcher, body, request, "text_completion")

    return app


def _adapter(engine: Engine, model: str, text: str) -> tuple[str, str | None]:
    try:
        return engine.resolve_adapter(model, text)
    except KeyError:
        raise OpenAIError(404, f"The model '{model}' does not exist. Available: {', '.join(engine.model_names)}.",
                          param="model", code="model_not_found") from None


def _request(engine: Engine, body: _Common, prompt_ids: list[int], adapter: str, default_max: int | None) -> Request:
    if body.n != 1:
        raise OpenAIError(400, "n > 1 is not supported; send several requests.", param="n")
    room = engine.context_length - len(prompt_ids)
    max_tokens = body.max_tokens or default_max or room
    if max_tokens > room:
        raise OpenAIError(400, f"This model's context is {engine.context_length} tokens; the prompt uses "
                               f"{len(prompt_ids)}, so max_tokens can be at most {max(room, 0)}.",
                          param="max_tokens", code="context_length_exceeded")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    params = SamplingParams(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                            max_new_tokens=max_tokens, stop=stops, seed=body.seed)
    return Request(prompt_ids, params, adapter)


async def _respond(batcher: Batcher, body: _Common, request: Request, kind: str):
    ident = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}"
    usage = {"prompt_tokens": len(request.prompt_ids)}
    if body.stream:
        return StreamingResponse(_sse(batcher, body, request, kind, ident, usage), media_type="text/event-stream")
    text, finish, completion_tokens = "", None, 0
    async for delta in batcher.stream(request):
        text += delta.text
        finish, completion_tokens = delta.finish_reason, delta.completion_tokens
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
              if kind == "chat.completion" else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
    return {"id": ident, "object": kind, "created": int(time.time()), "model": request.adapter, "choices": [choice],
            "usage": {**usage, "completion_tokens": completion_tokens,
                      "total_tokens": usage["prompt_tokens"] + completion_tokens}}


async def _sse(batcher: Batcher, body: _Common, request: Request, kind: str, ident: str,
               usage: dict[str, int]) -> AsyncIterator[str]:
    chat = kind == "chat.completion"
    chunk_kind = "chat.completion.chunk" if chat else "text_completion"
    created = int(time.time())

    def chunk(choice: dict[str, Any], **extra: Any) -> str:
        return "data: " + json.dumps({"id": ident, "object": chunk_kind, "created": created, "model": request.adapter,
                                      "choices": [choice], **extra}, ensure_ascii=False) + "\n\n"

    if chat:
        yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
    completion_tokens = 0
    try:
        async for delta in batcher.stream(request):
            completion_tokens = delta.completion_tokens
            content = {"delta": {"content": delta.text} if delta.text else {}} if chat else {"text": delta.text}
            yield chunk({"index": 0, **content, "finish_reason": delta.finish_reason})
    finally:  # the client went away (or we are done): stop decoding this request
        request.cancelled.set()
    if (body.stream_options or {}).get("include_usage"):
        total = {**usage, "completion_tokens": completion_tokens,
                 "total_tokens": usage["prompt_tokens"] + completion_tokens}
        yield "data: " + json.dumps({"id": ident, "object": chunk_kind, "created": created, "model": request.adapter,
                                     "choices": [], "usage": total}) + "\n\n"
    yield "data: [DONE]\n\n"


def serve(config: ServeConfig) -> None:
    import uvicorn

    engine = build_engine(config)
    api_key = config.api_key or os.environ.get("BACTRIAN_API_KEY", "")
    app = create_app(engine, api_key or None, config.max_batch, config.batch_wait_ms)
    log.info("Serving %s on http://%s:%d/v1 (models: %s)", config.base_model, config.host, config.port,
             ", ".join(engine.model_names))
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
