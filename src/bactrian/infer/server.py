"""`bactrian serve`: an OpenAI-compatible HTTP server (chat completions, completions, models) over the engine.
Concurrent requests are batched; `model` picks the adapter (`base`, an adapter name, or `auto`)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, QueueFull, UnknownModel
from ..languages import CODES
from .catalog import Catalog, build_catalog
from .config import ServeConfig
from .guard_pairs import PairLog, pair_record
from .metrics import ServingMetrics
from .protocols import Backend
from .requests import GUARD_RETRIES, Delta, LanguageGuard, Request, SamplingParams
from .routing import Route, guard_for
from .upstream import Upstream

log = logging.getLogger(__name__)


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=self.body(), headers=self.headers)


class RequestLimits(BaseModel):
    """What one request may ask of the server."""

    max_tokens: int = 1024  # generated tokens per request, also the default when a request names none
    max_request_bytes: int = 2 * 1024 * 1024
    max_stops: int = 4  # as OpenAI
    max_stop_chars: int = 256


HARMLESS_FIELDS = {"user", "metadata", "store", "service_tier"}  # accepted and ignored: they change no output
MAX_MESSAGES = 1024
# Prompts are tokenized off the event loop; one of more than LARGE_PROMPT_CHARS characters goes to a pool of its
# own, so a burst of huge prompts queues behind itself, never in front of a "hi".
LARGE_PROMPT_CHARS = 64 * 1024
SMALL_PROMPTS = ThreadPoolExecutor(4, thread_name_prefix="bactrian-encode")
LARGE_PROMPTS = ThreadPoolExecutor(1, thread_name_prefix="bactrian-encode-large")


def _unicode_text(text: str) -> str:
    """Text a tokenizer can take: JSON may escape a lone surrogate (\\ud800), which is no character at all."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"holds a lone surrogate ({text[exc.start]!r} at character {exc.start}), which is not "
                         "text; send the characters themselves") from None
    return text


Text = Annotated[str, AfterValidator(_unicode_text)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant"]
    content: Text
    name: Text | None = None


MAX_GUARD_RETRIES = 8  # re-decodes of one piece a request may ask for (the guard bounds a whole answer's too)


def _one_of_the_languages(code: str) -> str:
    if code not in CODES:
        raise ValueError(f"{code!r} is not one of the 52 languages; use a code among: {', '.join(CODES)}")
    return code


class BactrianFields(BaseModel):
    """The request's `bactrian` extension: the language guard on or off (else the server's --language_guard),
    the language to keep the answer in (else the user's, as `auto` tells it) and its bound (else
    --guard_retries)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    language_guard: bool | None = None
    lang: Annotated[str, Field(max_length=16), AfterValidator(_one_of_the_languages)] | None = None
    max_retries: int | None = Field(None, ge=0, le=MAX_GUARD_RETRIES)


@dataclass(frozen=True)
class GuardPolicy:
    """The server's language guard: whether a request that says nothing is guarded, and how many retries."""

    on: bool = False
    retries: int = GUARD_RETRIES


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # `max_tokens: true`, `stream: "yes"`, `n: "1"` are 400s
    model: str = Field(max_length=256)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    n: int = 1
    # OpenAI fields that would change the output: accepted only at the values that change nothing
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    bactrian: BactrianFields | None = None

    @model_validator(mode="after")
    def _refuse_what_is_not_honoured(self) -> _Common:
        if self.n != 1:
            raise ValueError("n > 1 is not supported; send several requests")
        unknown = sorted(set(self.model_extra or {}) - HARMLESS_FIELDS)
        if unknown:
            raise ValueError(f"unsupported parameter(s): {', '.join(unknown)}")
        unsupported = {"logprobs": self.logprobs not in (None, False, 0), "top_logprobs": self.top_logprobs,
                       "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                       "logit_bias": self.logit_bias, "tools": self.tools, "functions": self.functions,
                       "tool_choice": self.tool_choice not in (None, "none"),
                       "function_call": self.function_call not in (None, "none"),
                       "response_format": (self.response_format or {"type": "text"}).get("type") != "text"}
        refused = [name for name, value in unsupported.items() if value]
        if refused:
            raise ValueError(f"not supported by this server: {', '.join(refused)}")
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens differ")
        return self

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatCompletionRequest(_Common):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)


class CompletionRequest(_Common):
    prompt: Text | list[Text]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=1)
    suffix: str | None = Field(None, max_length=0)

    @model_validator(mode="after")
    def _refuse_echo(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo is not supported by this server")
        return self


class BodyLimit:
    """Read a request's body before the app does, refusing it (413) as soon as it passes `limit` bytes, by its
    Content-Length or as it streams in: no request can make the server hold more than that."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await _too_large(self.limit).response()(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await _too_large(self.limit).response()(scope, receive, send)
            more = message.get("more_body", False)
        first: list[dict[str, Any]] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay() -> dict[str, Any]:
            return first.pop() if first else await receive()

        await self.app(scope, replay, send)


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"The request body is larger than this server accepts ({limit} bytes).",
                       code="request_too_large")


def engine_app(engine: Any, api_key: str | None = None, max_batch: int = 64, wait_ms: float = 5.0,
               max_queue: int = 256, limits: RequestLimits | None = None, guard: GuardPolicy | None = None,
               pairs: PairLog | None = None) -> FastAPI:
    """The OpenAI API over a loaded engine (`engine.Engine`), decoded by its own batcher. The script of every token
    (what the language guard bans by) is computed now, not inside the decode step of the first guarded answer that
    drifts, where every other row would wait for it (about a second on Gemma's 262k tokens)."""
    from .batcher import Batcher  # decoding needs torch; `serve --upstream` loads neither
    from .guard import token_scripts

    token_scripts(engine.tokenizer)
    return create_app(engine.catalog, Batcher(engine, max_batch=max_batch, wait_ms=wait_ms, max_queue=max_queue),
                      api_key, limits, guard, pairs)


def create_app(catalog: Catalog, backend: Backend, api_key: str | None = None, limits: RequestLimits | None = None,
               guard: GuardPolicy | None = None, pairs: PairLog | None = None) -> FastAPI:
    """The OpenAI API over what `catalog` offers, generated by `backend` (the local batcher or an upstream);
    `guard` says who gets the language guard, `pairs` keeps the answers it corrected."""
    limits, policy = limits or RequestLimits(), guard or GuardPolicy()
    app = FastAPI(title="bactrian", version="1")
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)
    app.state.backend = backend
    serving = _Serving(backend, ServingMetrics(), pairs)
    created = int(time.time())

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: HttpRequest, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":  # its loc is a character position, not a field
            reason = (first.get("ctx") or {}).get("error", "invalid JSON")
            return OpenAIError(400, f"The body is not valid JSON: {reason} at character {first['loc'][-1]} (a raw "
                                    "control character inside a string must be escaped, e.g. \\u0000).").response()
        param = ".".join(str(part) for part in first["loc"][1:]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        return OpenAIError(400, f"{param or 'body'}: {message}", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        return OpenAIError(exc.status_code, str(exc.detail), type="invalid_request_error").response()

    def authorized(request: HttpRequest) -> bool:
        given = request.headers.get("authorization", "")
        return not api_key or secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    @app.middleware("http")
    async def _authenticate(request: HttpRequest, call_next):
        if request.url.path != "/health" and not authorized(request):  # the API, and /docs, /redoc, /openapi.json
            return OpenAIError(401, "Invalid or missing API key (Authorization: Bearer KEY).",
                               type="authentication_error", code="invalid_api_key").response()
        try:
            return await call_next(request)
        except Exception as exc:  # noqa: BLE001 - anything unforeseen: this request's 500, one log line
            log.warning("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
            return OpenAIError(500, f"The server failed on this request ({type(exc).__name__}).",
                               type="server_error").response()

    @app.get("/health")
    async def health(request: HttpRequest) -> JSONResponse:
        """Open to all; the worker's state (its last error's text) only with the key, when one is set."""
        state = {**backend.health(), "language_guard": "on" if policy.on else "off"}
        shown = state if authorized(request) else {"status": state["status"]}
        return JSONResponse(shown, status_code=200 if state["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus' text format (behind the key, when one is set, as every path but /health)."""
        return Response(serving.metrics.exposition(), media_type=ServingMetrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "bactrian"} for name in catalog.model_names]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, http: HttpRequest):
        users = [m.content for m in body.messages if m.role == "user"]
        route = _route(catalog, body.model, users)
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        text, prompt_ids = await _encode(catalog, route.adapter, messages)
        answer = _answer(catalog, body, policy, route, users, text, prompt_ids, limits)
        return await _respond(serving, body, answer, route, "chat.completion", http)

    @app.post("/v1/completions")
    async def complete(body: CompletionRequest, http: HttpRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise OpenAIError(400, "Only one prompt per request is supported.", param="prompt")
        route = _route(catalog, body.model, [prompts[0]])
        text, prompt_ids = await _encode(catalog, route.adapter, prompts[0])
        answer = _answer(catalog, body, policy, route, [prompts[0]], text, prompt_ids, limits)
        return await _respond(serving, body, answer, route, "text_completion", http)

    return app


async def _encode(catalog: Catalog, adapter: str, prompt: str | list[dict[str, str]]) -> tuple[str, list[int]]:
    """The prompt's text and tokens (a conversation rendered with the adapter's template), computed off the event
    loop so that a long prompt holds up no other request; a chat template that refuses the messages is the
    request's fault (400)."""

    def encode() -> tuple[str, list[int]]:
        if isinstance(prompt, str):
            return prompt, catalog.encode(prompt)
        text = catalog.chat_text(adapter, prompt)
        return text, catalog.encode_chat_text(adapter, text)

    size = len(prompt) if isinstance(prompt, str) else sum(len(message["content"]) for message in prompt)
    if size > catalog.context_length * catalog.max_token_chars:  # refused before it costs any tokenizing
        raise OpenAIError(400, f"This model's context is {catalog.context_length} tokens; a prompt of {size} "
                               "characters cannot fit it: shorten it.", param="prompt" if isinstance(prompt, str)
                          else "messages", code="context_length_exceeded")
    pool = LARGE_PROMPTS if size > LARGE_PROMPT_CHARS else SMALL_PROMPTS  # a big prompt never queues a small one
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, encode)
    except Exception as exc:  # jinja2's TemplateError and kin, raised by the model's own chat template
        if isinstance(prompt, str):
            raise OpenAIError(400, f"The prompt could not be tokenized: {exc}", param="prompt") from None
        raise OpenAIError(400, f"The model's chat template refused these messages: {exc}", param="messages") from None


def _route(catalog: Catalog, model: str, user_messages: list[str]) -> Route:
    try:
        return catalog.resolve_adapter(model, user_messages)
    except UnknownModel as exc:
        raise OpenAIError(404, str(exc), param="model", code="model_not_found") from None


def _request(catalog: Catalog, body: _Common, text: str, prompt_ids: list[int], adapter: str,
             limits: RequestLimits, guard: LanguageGuard | None) -> Request:
    room = catalog.context_length - len(prompt_ids)
    if room < 1:
        raise OpenAIError(400, f"This model's context is {catalog.context_length} tokens and the prompt uses "
                               f"{len(prompt_ids)}: shorten it.", param="messages", code="context_length_exceeded")
    max_tokens = body.token_budget or min(limits.max_tokens, room)
    if max_tokens > limits.max_tokens:
        raise OpenAIError(400, f"max_tokens is at most {limits.max_tokens} on this server.", param="max_tokens")
    if max_tokens > room:
        raise OpenAIError(400, f"This model's context is {catalog.context_length} tokens; the prompt uses "
                               f"{len(prompt_ids)}, so max_tokens can be at most {room}.",
                          param="max_tokens", code="context_length_exceeded")
    stops = body.stops
    if len(stops) > limits.max_stops or any(len(stop) > limits.max_stop_chars for stop in stops):
        raise OpenAIError(400, f"stop takes at most {limits.max_stops} strings of at most {limits.max_stop_chars} "
                               "characters.", param="stop")
    params = SamplingParams(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                            max_new_tokens=max_tokens, stop=stops, seed=body.seed)
    return Request(prompt_ids, params, adapter, prompt_text=text, guard=guard)


def _guard_asked(body: _Common, policy: GuardPolicy) -> bool:
    asked = body.bactrian.language_guard if body.bactrian else None
    return policy.on if asked is None else asked


def _language_guard(body: _Common, policy: GuardPolicy, route: Route,
                    user_messages: list[str]) -> LanguageGuard | None:
    """The guard of a request that asks for one: in the language it names, else the user's, by the rule `auto`
    uses (which `auto` has applied already); None when no language can be told."""
    fields = body.bactrian or BactrianFields()
    retries = policy.retries if fields.max_retries is None else fields.max_retries
    return guard_for(user_messages, retries, fields.lang or (route.lang if route.rule != "requested" else None))


def _answer(catalog: Catalog, body: _Common, policy: GuardPolicy, route: Route, user_messages: list[str], text: str,
            prompt_ids: list[int], limits: RequestLimits) -> _Answer:
    """The request to decode, with its guard when it asks for one, as an answer still to come. The pair log's
    instruction is the last user message (or the prompt)."""
    asked = _guard_asked(body, policy)
    guard = _language_guard(body, policy, route, user_messages) if asked else None
    request = _request(catalog, body, text, prompt_ids, route.adapter, limits, guard)
    return _Answer(request, user_messages[-1] if user_messages else "", asked)


@dataclass
class _Answer:
    """A request's answer as its deltas arrive: its text, how it ended, what the guard did."""

    request: Request
    instruction: str
    guard_asked: bool
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    guard_report: dict[str, Any] | None = None
    speculation: dict[str, int] | None = None

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.finish_reason, self.completion_tokens = delta.finish_reason, delta.completion_tokens
        self.guard_report = delta.guard or self.guard_report
        self.speculation = delta.speculation or self.speculation

    @property
    def guard(self) -> dict[str, Any] | None:
        """The guard's report to show, when the guard was asked for: why it did not run, or what it did."""
        if not self.guard_asked:
            return None
        if self.request.guard is None:
            return {"lang": None, "skipped": "language not detected"}
        if self.guard_report is None and self.finish_reason in ("stop", "length"):  # an upstream decoded it
            return {"lang": self.request.guard.lang, "skipped": "this server's backend does not guard answers"}
        return self.guard_report


@dataclass
class _Serving:
    """What every answer goes through: the backend that generates it, the counters, the pair log."""

    backend: Backend
    metrics: ServingMetrics
    pairs: PairLog | None

    def count(self, answer: _Answer) -> None:
        self.metrics.answered(answer.request.adapter, answer.finish_reason, answer.completion_tokens, answer.guard,
                              answer.speculation)

    async def keep(self, answer: _Answer) -> None:
        """A corrected answer: one log line, and its preference pair appended to the pair log (off the event
        loop: another process may hold the file's lock)."""
        report = answer.guard
        if not report or not report.get("retried"):
            return
        log.info("Language guard (%s, model %s): %d piece(s) decoded again (%d retries), %d left unfixed.",
                 report["lang"], answer.request.adapter, report["retried"], report["retries"], report["unfixed"])
        row = pair_record(answer.instruction, answer.text, report, answer.request.adapter) if self.pairs else None
        if row is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.pairs.append, row)


def _bactrian_fields(route: Route | None, guard: dict[str, Any] | None) -> dict[str, Any]:
    """The response's `bactrian` field: for `auto`, what was detected and why this adapter answered (the `model`
    field names the adapter); when the guard was asked for, its report."""
    fields: dict[str, Any] = {}
    if route is not None and route.rule != "requested":
        fields["route"] = route.to_dict()
    if guard is not None:
        fields["guard"] = guard
    return {"bactrian": fields} if fields else {}


def _route_headers(route: Route) -> dict[str, str]:
    return {} if route.rule == "requested" else {"x-bactrian-route": json.dumps(route.to_dict())}


async def _respond(serving: _Serving, body: _Common, answer: _Answer, route: Route, kind: str, http: HttpRequest):
    request = answer.request
    ident = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}"
    usage = {"prompt_tokens": len(request.prompt_ids)}
    try:
        ticket = serving.backend.submit(request)
    except QueueFull as exc:
        raise OpenAIError(429, str(exc), type="rate_limit_error", code="queue_full",
                          headers={"Retry-After": "1"}) from None
    if body.stream:
        return StreamingResponse(_sse(serving, ticket, body, answer, route, kind, ident, usage),
                                 media_type="text/event-stream", headers=_route_headers(route))
    watcher = asyncio.create_task(_cancel_on_disconnect(http, request))
    try:
        async for delta in ticket:
            answer.add(delta)
            if delta.error:
                raise _delta_error(delta)
    finally:
        watcher.cancel()
        serving.count(answer)
    await serving.keep(answer)
    text, finish, completion_tokens = answer.text, answer.finish_reason, answer.completion_tokens
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
              if kind == "chat.completion" else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
    content = {"id": ident, "object": kind, "created": int(time.time()), "model": request.adapter,
               "choices": [choice], "usage": {**usage, "completion_tokens": completion_tokens,
                                              "total_tokens": usage["prompt_tokens"] + completion_tokens},
               **_bactrian_fields(route, answer.guard)}
    return JSONResponse(content, headers=_route_headers(route))


def _delta_error(delta: Delta) -> OpenAIError:
    return OpenAIError(delta.status, delta.error or "generation failed",
                       type="server_error" if delta.status >= 500 else "invalid_request_error")


async def _cancel_on_disconnect(http: HttpRequest, request: Request) -> None:
    """A client that hangs up while its answer is decoded (not streaming) cancels it at once."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            request.cancelled.set()
            return


async def _sse(serving: _Serving, ticket: AsyncIterator[Delta], body: _Common, answer: _Answer, route: Route,
               kind: str, ident: str, usage: dict[str, int]) -> AsyncIterator[str]:
    request = answer.request
    chat = kind == "chat.completion"
    chunk_kind = "chat.completion.chunk" if chat else "text_completion"
    created = int(time.time())

    def chunk(choice: dict[str, Any], **extra: Any) -> str:
        return "data: " + json.dumps({"id": ident, "object": chunk_kind, "created": created, "model": request.adapter,
                                      "choices": [choice], **extra}, ensure_ascii=False) + "\n\n"

    unshown: Route | None = route  # the route rides on the first chunk, the guard's report on the last
    if chat:
        yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
                    **_bactrian_fields(unshown, None))
        unshown = None
    try:
        async for delta in ticket:
            answer.add(delta)
            if delta.error:
                yield "data: " + json.dumps(_delta_error(delta).body()) + "\n\n"
                break
            content = {"delta": {"content": delta.text} if delta.text else {}} if chat else {"text": delta.text}
            yield chunk({"index": 0, **content, "finish_reason": delta.finish_reason},
                        **_bactrian_fields(unshown, answer.guard if delta.finish_reason else None))
            unshown = None
    finally:  # the client went away (or we are done): stop decoding this request
        request.cancelled.set()
        serving.count(answer)
    await serving.keep(answer)
    if (body.stream_options or {}).get("include_usage"):
        total = {**usage, "completion_tokens": answer.completion_tokens,
                 "total_tokens": usage["prompt_tokens"] + answer.completion_tokens}
        yield "data: " + json.dumps({"id": ident, "object": chunk_kind, "created": created, "model": request.adapter,
                                     "choices": [], "usage": total}) + "\n\n"
    yield "data: [DONE]\n\n"


HEADER_SECONDS = 10.0  # for a request's headers to arrive, from its connection (or its previous response) on


def uvicorn_config(app: FastAPI, host: str, port: int, header_seconds: float = HEADER_SECONDS) -> Any:
    """uvicorn's settings for a server many people share: a request's headers must arrive within
    `header_seconds` (uvicorn itself waits forever: 200 connections sending headers a byte at a time held their
    sockets open for good), headers of at most 16 KiB, at most 1,000 connections (503 beyond)."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request's headers are in
                self._deadline.cancel()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(header_seconds, self._too_slow)

        def _too_slow(self) -> None:
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()

    return uvicorn.Config(app, host=host, port=port, log_level="warning", http=HeaderDeadline,
                          limit_concurrency=1000, h11_max_incomplete_event_size=16 * 1024)


def api_key_of(config: ServeConfig) -> str:
    """--api_key, else the first line of --api_key_file, else $BACTRIAN_API_KEY ("" for none)."""
    if config.api_key_file:
        try:
            lines = Path(config.api_key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api_key_file {config.api_key_file}: cannot read it ({exc}).") from exc
        if not lines or not lines[0].strip():
            raise ConfigError(f"--api_key_file {config.api_key_file}: its first line is empty; put the key there.")
        return config.api_key or lines[0].strip()
    return config.api_key or os.environ.get("BACTRIAN_API_KEY", "")


def guard_policy_of(config: ServeConfig) -> GuardPolicy:
    """--language_guard and --guard_retries, checked."""
    if not 0 <= config.guard_retries <= MAX_GUARD_RETRIES:
        raise ConfigError(f"--guard_retries {config.guard_retries}: choose 0 to {MAX_GUARD_RETRIES}.")
    if config.language_guard and config.upstream:
        raise ConfigError("--language_guard: the guard runs where answers are decoded; with --upstream, turn it on "
                          "there (a bactrian serve upstream).")
    return GuardPolicy(config.language_guard, config.guard_retries)


def serve(config: ServeConfig) -> None:
    import uvicorn

    api_key = api_key_of(config)
    limits = RequestLimits(max_tokens=config.max_tokens_limit, max_request_bytes=config.max_request_bytes)
    guard = guard_policy_of(config)
    pairs = PairLog(config.guard_pairs_file) if config.guard_pairs_file else None
    if config.upstream:
        catalog = build_catalog(config)
        upstream = Upstream(config.upstream, config.upstream_api_key or os.environ.get("BACTRIAN_UPSTREAM_API_KEY", ""),
                            config.upstream_base_name)
        app = create_app(catalog, upstream, api_key or None, limits, guard, pairs)
        log.info("Forwarding to %s", config.upstream)
    else:
        from .engine import build_engine

        engine = build_engine(config)
        catalog = engine.catalog
        app = engine_app(engine, api_key or None, config.max_batch, config.batch_wait_ms, config.max_queue, limits,
                         guard, pairs)
    log.info("Serving %s on http://%s:%d/v1 (models: %s)", config.base_model, config.host, config.port,
             ", ".join(catalog.model_names))
    uvicorn.Server(uvicorn_config(app, config.host, config.port)).run()
