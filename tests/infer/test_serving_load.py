"""`bactrian serve` under load and abuse: continuous batching, isolation, bounds and backpressure, with the openai
client and raw HTTP over loopback (tiny model, 512-token context)."""

import concurrent.futures
import gc
import json
import threading
import time

import httpx
import openai
import psutil
import pytest

from bactrian.infer import decoding
from bactrian.infer.requests import Request, SamplingParams
from bactrian.infer.server import RequestLimits, engine_app

from support import LiveServer

HEADERS = {"Authorization": "Bearer k"}
QUESTION = [{"role": "user", "content": "Name a primary colour."}]


@pytest.fixture(scope="module")
def url(engine):
    limits = RequestLimits(max_tokens=480, max_request_bytes=256 * 1024)
    with LiveServer(engine_app(engine, api_key="k", limits=limits)) as u:
        yield u


@pytest.fixture()
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=120)


def alone(engine, adapter, messages, max_tokens, **params):
    ids = engine.catalog.encode_chat(adapter, messages)
    return engine.generate([Request(ids, SamplingParams(max_new_tokens=max_tokens, **params), adapter)])[0][0]


def post(url, body, **kwargs):
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=HEADERS, timeout=120, **kwargs)


def test_hostile_sampling_values_harm_nobody(client, engine, url):
    good = [(["base", "fr", "de"][i % 3], f"Question {i}: name a colour.") for i in range(16)]
    hostile = [{"temperature": 1e-300}, {"temperature": 2.0, "seed": 2**64 - 1}, {"temperature": 1.0, "seed": -2**63},
               {"temperature": 1.5, "top_p": 1e-9}, {"temperature": 2.0, "top_k": 1}, {"temperature": 1e-6}]

    def ask_good(job):
        reply = client.chat.completions.create(model=job[0], messages=[{"role": "user", "content": job[1]}],
                                               max_tokens=8, temperature=0)
        return reply.choices[0].message.content

    def ask_hostile(params):
        return post(url, {"model": "fr", "messages": QUESTION, "max_tokens": 8, **params}).status_code

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        bad = pool.map(ask_hostile, hostile)
        answers = list(pool.map(ask_good, good))
    assert list(bad) == [200] * len(hostile)
    assert answers == [alone(engine, a, [{"role": "user", "content": q}], 8) for a, q in good]
    greedy = alone(engine, "fr", QUESTION, 8)
    for params in ({"temperature": 1e-300}, {"temperature": 2.0, "top_k": 1}, {"temperature": 1.5, "top_p": 1e-9}):
        assert post(url, {"model": "fr", "messages": QUESTION, "max_tokens": 8, **params}).json()[
            "choices"][0]["message"]["content"] == greedy, params
    assert post(url, {"model": "fr", "messages": QUESTION, "seed": 2**64}).status_code == 400


def test_bounds_are_enforced(url, client):
    long_prompt = [{"role": "user", "content": "colour " * 600}]
    too_long = post(url, {"model": "base", "messages": long_prompt})  # no max_tokens: still refused
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
    cases = {"stop": {"stop": [f"s{i}" for i in range(5)]}, "stop ": {"stop": ["x" * 300]},
             "max_tokens": {"max_tokens": 481}, "logprobs": {"logprobs": True}, "frobnicate": {"frobnicate": 1},
             "presence_penalty": {"presence_penalty": 0.5},
             "response_format": {"response_format": {"type": "json_object"}},
             "tools": {"tools": [{"type": "function"}]}, "max_completion_tokens": {"max_completion_tokens": 5,
                                                                                  "max_tokens": 6}}
    for name, extra in cases.items():
        response = post(url, {"model": "base", "messages": QUESTION, **extra})
        assert response.status_code == 400, name
        assert name.strip() in response.json()["error"]["message"] or name == "max_completion_tokens", name
    honoured = client.chat.completions.create(model="base", messages=QUESTION, max_completion_tokens=3,
                                              temperature=0, user="someone", logprobs=False, presence_penalty=0)
    assert honoured.usage.completion_tokens <= 3 and honoured.choices[0].finish_reason in ("length", "stop")
    huge = post(url, {"model": "base", "messages": [{"role": "user", "content": "x" * 300_000}]})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: refused while it streams in
        yield b'{"model": "base", "messages": [{"role": "user", "content": "'
        for _ in range(64):
            yield b"y" * 8192
        yield b'"}]}'

    streamed = httpx.post(f"{url}/v1/chat/completions", content=chunks(), headers=HEADERS, timeout=60)
    assert streamed.status_code == 413


def test_a_short_request_joins_while_a_long_one_decodes(engine):
    app = engine_app(engine)
    batcher = app.state.backend
    body = {"model": "base", "messages": QUESTION, "max_tokens": 480, "stream": True, "temperature": 0,
            "stop": ["never-printed"]}
    with LiveServer(app) as url, httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as long:
        lines = long.iter_lines()
        next(line for line in lines if line.startswith("data: {"))  # the long one is decoding now
        short = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "fr", "messages": QUESTION, "max_tokens": 1, "temperature": 0}).json()
        long_done_before_short = batcher.finished["length"] > 1
        assert any('"finish_reason": "length"' in line for line in lines)  # the long one then ran to its end
    assert short["usage"]["completion_tokens"] == 1 and short["choices"][0]["finish_reason"] == "length"
    assert not long_done_before_short, "the short request waited for the long one to finish"


def test_queue_full_is_429_with_retry_after_and_a_vanished_client_frees_its_place(engine):
    app = engine_app(engine, max_batch=1, max_queue=1)
    batcher = app.state.backend
    body = {"model": "base", "messages": QUESTION, "max_tokens": 4}

    def wait_for(condition):
        deadline = time.time() + 10
        while not condition() and time.time() < deadline:
            time.sleep(0.01)

    with LiveServer(app) as url:
        asked = f"{url}/v1/chat/completions"
        with engine.lock:  # decoding is frozen: the batch (of one) and the queue (of one) fill up
            vanishing = threading.Thread(target=_ignore_timeout, args=(asked, body, 0.5))
            vanishing.start()
            wait_for(lambda: batcher.pending.qsize() == 0 and not vanishing.is_alive())
            waiting = concurrent.futures.ThreadPoolExecutor(1).submit(httpx.post, asked, json=body, timeout=60)
            wait_for(lambda: batcher.pending.qsize() == 1)
            refused = httpx.post(asked, json=body, timeout=60)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
        assert waiting.result(timeout=30).status_code == 200  # the vanished client's row left; this one ran
        assert batcher.finished["cancelled"] == 1


def _ignore_timeout(url, body, timeout, headers=None):
    try:
        httpx.post(url, json=body, timeout=timeout, headers=headers)
    except httpx.TimeoutException:
        pass


def test_a_non_streaming_client_that_hangs_up_stops_its_decoding(engine):
    app = engine_app(engine)
    batcher = app.state.backend
    with LiveServer(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", timeout=0.3, json={
                "model": "base", "messages": QUESTION, "max_tokens": 480, "stop": ["never"], "temperature": 0})
        deadline = time.time() + 10
        while batcher.finished["cancelled"] < 1 and time.time() < deadline:
            time.sleep(0.02)
        assert batcher.finished["cancelled"] == 1 and batcher.finished["length"] == 0


def test_engine_failures_fail_only_their_requests_in_openai_format(engine, monkeypatch):
    app = engine_app(engine)
    real = decoding.Row.draw

    def flaky(row):
        if row.request.params.seed == 666:
            raise RuntimeError("boom")
        return real(row)

    monkeypatch.setattr(decoding.Row, "draw", flaky)
    with LiveServer(app) as url:
        def ask(seed):
            return post(url, {"model": "base", "messages": QUESTION, "max_tokens": 6, "temperature": 0.5,
                              "seed": seed})

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(ask, [1, 2, 666, 3, 4, 5, 6, 7]))
        assert [r.status_code for r in replies] == [200, 200, 500, 200, 200, 200, 200, 200]
        assert replies[2].json()["error"] == {"message": "sampling failed: boom", "type": "server_error",
                                              "param": None, "code": None}
        streamed = post(url, {"model": "base", "messages": QUESTION, "max_tokens": 6, "temperature": 0.5,
                              "seed": 666, "stream": True})
        events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        assert events[-1]["error"]["message"] == "sampling failed: boom" and streamed.text.endswith("[DONE]\n\n")

        original_step = decoding.DecodeBatch.step
        calls = {"n": 0}

        def dies_once(self):
            calls["n"] += 1
            if calls["n"] == 1:
                raise MemoryError("worker killed")
            return original_step(self)

        monkeypatch.setattr(decoding.DecodeBatch, "step", dies_once)
        died = post(url, {"model": "base", "messages": QUESTION, "max_tokens": 4})
        assert died.status_code == 500 and "worker failed" in died.json()["error"]["message"]
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["worker_restarts"] == 1 and "worker killed" in health["last_error"]
        assert post(url, {"model": "base", "messages": QUESTION, "max_tokens": 4}).status_code == 200


def test_a_chat_template_that_refuses_the_roles_is_a_400(engine, url, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("Conversation roles must alternate user/assistant/user/assistant/...")

    monkeypatch.setattr(engine.catalog, "chat_text", refuse)  # where the tokenizer's chat template runs
    response = post(url, {"model": "base", "messages": QUESTION})
    assert response.status_code == 400 and "roles must alternate" in response.json()["error"]["message"]


def test_64_clients_with_a_tenth_hostile(engine, url, caplog):
    """A bounded stress test: 192 requests from 64 concurrent clients, every tenth hostile. Every good request is
    answered with what it gets alone, health stays ok, memory returns to its level before the burst."""
    prompts = [f"Question {i}: tell me about colour number {i}." for i in range(192)]
    models = ["base", "fr", "de"]
    truth = {i: alone(engine, models[i % 3], [{"role": "user", "content": p}], 12) for i, p in enumerate(prompts)}
    abuses = [
        lambda: post(url, {"model": "base", "messages": QUESTION, "temperature": 1e-300, "max_tokens": 12}),
        lambda: post(url, {"model": "base", "messages": QUESTION, "seed": 2**64}),
        lambda: post(url, {"model": "base", "messages": QUESTION, "stop": ["a"] * 5000}),
        lambda: post(url, {"model": "base", "messages": [{"role": "user", "content": "word " * 900}]}),
        lambda: post(url, {"model": "base", "messages": [{"role": "user", "content": "z" * 400_000}]}),
        lambda: httpx.post(f"{url}/v1/chat/completions", content=b"{broken", headers=HEADERS),
        lambda: _vanish_mid_stream(url),
        lambda: _vanish_while_queued(url),
    ]

    def run(i):
        if i % 10 == 9:
            abuses[(i // 10) % len(abuses)]()
            return i, None
        response = post(url, {"model": models[i % 3], "messages": [{"role": "user", "content": prompts[i]}],
                              "max_tokens": 12, "temperature": 0})
        return i, response.json()["choices"][0]["message"]["content"]

    with concurrent.futures.ThreadPoolExecutor(64) as pool:  # warm-up burst: allocator pools settle
        list(pool.map(run, range(64)))
    gc.collect()
    before = psutil.Process().memory_info().rss
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = dict(pool.map(run, range(len(prompts))))
    assert {i: a for i, a in answers.items() if a is not None} == {i: truth[i] for i in answers if i % 10 != 9}
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    gc.collect()
    grown = psutil.Process().memory_info().rss - before
    assert grown < 64 * 2**20, f"memory grew by {grown / 2**20:.0f} MB after the burst"
    assert "Traceback" not in caplog.text


def _vanish_mid_stream(url):
    with httpx.stream("POST", f"{url}/v1/chat/completions", headers=HEADERS, timeout=60, json={
            "model": "fr", "messages": QUESTION, "max_tokens": 400, "stream": True, "stop": ["never"]}) as response:
        next(line for line in response.iter_lines() if line.startswith("data: {"))


def _vanish_while_queued(url):
    _ignore_timeout(f"{url}/v1/chat/completions", {"model": "de", "messages": QUESTION, "max_tokens": 400,
                                                   "stop": ["never"]}, 0.05, HEADERS)


def test_an_unforeseen_failure_is_a_500_in_openai_format_without_a_traceback(engine, url, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(engine.catalog, "resolve_adapter", broken)
    response = post(url, {"model": "base", "messages": QUESTION})
    assert response.status_code == 500
    assert response.json()["error"] == {"message": "The server failed on this request (RuntimeError).",
                                         "type": "server_error", "param": None, "code": None}
    assert "Traceback" not in caplog.text


def test_connections_that_send_headers_a_byte_at_a_time_are_closed_at_the_deadline(engine):
    """uvicorn waits forever for a request's headers: 200 such connections held their sockets for good."""
    import socket

    import uvicorn

    from bactrian.infer.server import uvicorn_config

    from support import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn_config(engine_app(engine), "127.0.0.1", port, header_seconds=1.0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        started = time.time()
        for sock in slow:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never the blank line that ends the headers
            sock.settimeout(5)
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200  # others are served meanwhile
        assert all(sock.recv(100) == b"" for sock in slow)  # closed by the server
        assert time.time() - started < 4
        kept = socket.create_connection(("127.0.0.1", port))  # a whole request, then an idle keep-alive connection
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        kept.settimeout(5)
        received = b""
        while chunk := kept.recv(1000):  # the answer, then the close (no second request came in time)
            received += chunk
        assert b"200 OK" in received and b'"status"' in received
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_lone_surrogate_or_a_raw_nul_is_named_as_what_it_is(url):
    """They were "the model's chat template refused these messages" (on /v1/completions too) and param "55"."""
    body = '{"model": "base", "prompt": "a \\ud800 b", "max_tokens": 2}'
    reply = httpx.post(f"{url}/v1/completions", content=body, headers={**HEADERS, "content-type": "application/json"})
    assert reply.status_code == 400 and "lone surrogate" in reply.json()["error"]["message"]
    assert "chat template" not in reply.json()["error"]["message"]
    chat = '{"model": "base", "messages": [{"role": "user", "content": "\\udfff"}]}'
    reply = httpx.post(f"{url}/v1/chat/completions", content=chat,
                       headers={**HEADERS, "content-type": "application/json"})
    assert reply.status_code == 400 and "lone surrogate" in reply.json()["error"]["message"]
    raw = b'{"model": "base", "prompt": "a \x00 b", "max_tokens": 2}'
    reply = httpx.post(f"{url}/v1/completions", content=raw, headers={**HEADERS, "content-type": "application/json"})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["message"].startswith("The body is not valid JSON")
    assert error["param"] is None


def test_too_many_messages_are_refused_before_any_rendering(url):
    """A 2 MB body of 68,000 one-character messages cost ~1.3 s of CPU before its 400."""
    body = {"model": "base", "messages": [{"role": "user", "content": "x"}] * 1025}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers=HEADERS, timeout=60)
    assert reply.status_code == 400 and "at most 1024" in reply.json()["error"]["message"]


def test_a_huge_prompt_being_tokenized_holds_up_no_small_one(url, monkeypatch):
    """Large prompts are tokenized in a pool of their own: with that pool stuck, a "hi" is still answered."""
    from bactrian.infer import server

    monkeypatch.setattr(server, "LARGE_PROMPT_CHARS", 1000)
    release = threading.Event()
    server.LARGE_PROMPTS.submit(release.wait)  # the large-prompt pool is busy until released
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            big = pool.submit(httpx.post, f"{url}/v1/completions", headers=HEADERS, timeout=120,
                              json={"model": "base", "prompt": "word " * 1000, "max_tokens": 1})
            small = httpx.post(f"{url}/v1/chat/completions", headers=HEADERS, timeout=60,
                               json={"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            assert small.status_code == 200 and not big.done()
            release.set()
            assert big.result().status_code == 400  # its tokens cannot fit the 512-token context
    finally:
        release.set()


def test_the_linear_chat_rendering_joins_messages_as_before():
    from bactrian.infer.catalog import Catalog
    from bactrian.prompts import load_template

    template = load_template("alpaca")
    catalog = Catalog(None, template, [])
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": ""},
                    {"role": "user", "content": "a"}, {"role": "user", "content": ""},
                    {"role": "assistant", "content": "A"},
                    {"role": "user", "content": "b"}, {"role": "user", "content": "c"}]
    expected = "S\n\n" + template.render("a\n\n") + "A\n\n" + template.render("b\n\nc")
    assert catalog.chat_text("base", conversation) == expected


def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(url, engine, monkeypatch):
    monkeypatch.setattr(engine.tokenizer.__class__, "__call__", lambda *a, **k: pytest.fail("tokenized"))
    text = "x" * (engine.catalog.context_length * engine.catalog.max_token_chars + 1)
    reply = httpx.post(f"{url}/v1/completions", headers=HEADERS, timeout=60,
                       json={"model": "base", "prompt": text, "max_tokens": 1})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "context_length_exceeded"
    assert "cannot fit" in reply.json()["error"]["message"]
