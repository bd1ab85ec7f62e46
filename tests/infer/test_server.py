"""`bactrian serve` with its real consumer, the official openai client, over loopback."""

import concurrent.futures
import json

import httpx
import openai
import pytest

from bactrian.infer.requests import Request, SamplingParams
from bactrian.infer.server import engine_app

from support import LiveServer, free_port, wait_until_ready

pytestmark = pytest.mark.dtype_sensitive  # runs under both choices of `auto` in .ci/run

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def url(engine):
    with LiveServer(engine_app(engine, api_key=KEY)) as address:
        yield address


@pytest.fixture()
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def expected(engine, adapter, messages, max_tokens):
    ids = engine.catalog.encode_chat(adapter, messages)
    return engine.generate([Request(ids, SamplingParams(max_new_tokens=max_tokens), adapter)])[0]


def test_chat_completion_matches_the_engine(client, engine):
    messages = [{"role": "user", "content": "Nomme une couleur."}]
    reply = client.chat.completions.create(model="fr", messages=messages, max_tokens=8, temperature=0)
    text, reason, tokens = expected(engine, "fr", messages, 8)
    assert reply.choices[0].message.content == text and reply.choices[0].finish_reason == reason
    assert reply.usage.completion_tokens == tokens
    assert reply.usage.prompt_tokens == len(engine.catalog.encode_chat("fr", messages))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + tokens
    assert reply.model == "fr" and reply.object == "chat.completion"


def test_streamed_chat_completion(client, engine):
    messages = [{"role": "user", "content": "Add the numbers."}]
    chunks = list(client.chat.completions.create(model="de", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    text, reason, tokens = expected(engine, "de", messages, 10)
    assert content == text and finish == [reason]
    assert chunks[-1].usage.completion_tokens == tokens


def test_completion_and_stop(client, engine):
    reply = client.completions.create(model="base", prompt="Red is", max_tokens=6, temperature=0)
    full = engine.generate([Request(engine.catalog.encode("Red is"), SamplingParams(max_new_tokens=6))])[0][0]
    assert reply.choices[0].text == full and reply.choices[0].finish_reason == "length"
    stop = full[2:4]
    stopped = client.completions.create(model="base", prompt="Red is", max_tokens=6, temperature=0, stop=[stop])
    assert stopped.choices[0].text == full[: full.find(stop)] and stopped.choices[0].finish_reason == "stop"


def test_models_listing_and_adapter_selection(client):
    assert [m.id for m in client.models.list().data] == ["base", "fr", "de", "auto"]
    answers = {name: client.chat.completions.create(model=name, max_tokens=8, temperature=0,
                                                    messages=[{"role": "user", "content": "Hi"}]).choices[0]
               .message.content for name in ("base", "fr", "de")}
    assert len(set(answers.values())) == 3


def test_errors_in_openai_format(client, url):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="xx", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=100000)
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], n=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    for body in ({"model": "base"}, {"model": "base", "messages": "hi"}, {"model": "base", "messages": [],
                 "temperature": "hot"}, {"messages": [{"role": "user", "content": "x"}]}):
        response = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert response.status_code == 400 and response.json()["error"]["message"]
    broken = httpx.post(f"{url}/v1/chat/completions", content=b"{not json",
                        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert broken.status_code == 400
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_32_concurrent_clients_are_all_answered_correctly(client, engine):
    jobs = [(["base", "fr", "de"][i % 3], f"Question {i}: name a colour.") for i in range(32)]
    truth = {job: expected(engine, job[0], [{"role": "user", "content": job[1]}], 8)[0] for job in jobs}

    def ask(job):
        reply = client.chat.completions.create(model=job[0], messages=[{"role": "user", "content": job[1]}],
                                               max_tokens=8, temperature=0)
        return job, reply.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = dict(pool.map(ask, jobs))
    assert answers == truth


def test_a_client_that_disconnects_mid_stream_does_not_disturb_others(client, url):
    with httpx.stream("POST", f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "fr", "stream": True, "max_tokens": 200,
                            "messages": [{"role": "user", "content": "Talk"}]}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                assert json.loads(line[6:])["object"] == "chat.completion.chunk"
                break
    reply = client.chat.completions.create(model="de", messages=[{"role": "user", "content": "ok"}], max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_server_binds_loopback_by_default():
    from bactrian.infer.config import ServeConfig

    assert ServeConfig().host == "127.0.0.1"


def test_auto_model_routes_by_language(client):
    reply = client.chat.completions.create(model="auto", max_tokens=4, temperature=0, messages=[
        {"role": "user", "content": "Guten Morgen, kannst du mir bitte sagen, wie spät es ist?"}])
    assert reply.model == "de"
    route = reply.model_extra["bactrian"]["route"]
    assert (route["lang"], route["language_from"], route["rule"]) == ("de", "detected", "covers-language")
    assert 0.5 < route["confidence"] <= 1 and route["reason"] == "the only adapter covering de"


def test_auto_route_in_headers_and_streams_and_short_replies_keep_the_language(client):
    messages = [{"role": "user", "content": "Bonjour, pouvez-vous me dire quelle heure il est maintenant ?"},
                {"role": "assistant", "content": "Il est midi."}, {"role": "user", "content": "ok"}]
    raw = client.chat.completions.with_raw_response.create(model="auto", max_tokens=2, temperature=0,
                                                           messages=messages)
    route = json.loads(raw.headers["x-bactrian-route"])
    assert raw.parse().model == "fr" and (route["lang"], route["language_from"]) == ("fr", "conversation")
    chunks = list(client.chat.completions.create(model="auto", max_tokens=2, temperature=0, messages=messages,
                                                  stream=True))
    assert chunks[0].model_extra["bactrian"]["route"] == route
    assert all("bactrian" not in chunk.model_extra for chunk in chunks[1:]) and chunks[0].model == "fr"
    named = client.chat.completions.with_raw_response.create(model="de", max_tokens=2, messages=messages)
    assert "x-bactrian-route" not in named.headers and "bactrian" not in named.parse().model_extra


def test_bactrian_serve_command_with_api_key(tiny_llama, tiny_adapters):
    import os
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bactrian", "serve", "--base_model", str(tiny_llama),
                                "--adapters_dir", str(tiny_adapters["fr"].parent), "--port", str(port)],
                               env={**os.environ, "BACTRIAN_API_KEY": KEY}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{url}/health")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["base", "de", "fr", "auto"]
        assert httpx.get(f"{url}/v1/models").status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_with_a_key_only_a_minimal_health_is_open(url):
    """/docs, /redoc and /openapi.json were served to anyone, and /health showed the worker's last exception."""
    for path in ("/docs", "/redoc", "/openapi.json", "/v1/models"):
        assert httpx.get(f"{url}{path}").status_code == 401, path
        assert httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200, path
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    full = httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert full["status"] == "ok" and "last_error" in full and "worker_restarts" in full


@pytest.mark.parametrize("field, value", [("max_tokens", True), ("stream", "yes"), ("n", "1"), ("temperature", "0"),
                                          ("seed", 1.5), ("top_k", False)])
def test_request_fields_are_strictly_typed(url, field, value):
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, field: value}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == field, reply.text


def test_an_integer_is_a_valid_temperature(client):
    reply = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                           temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_the_api_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from bactrian.errors import ConfigError
    from bactrian.infer.config import ServeConfig
    from bactrian.infer.server import api_key_of

    monkeypatch.setenv("BACTRIAN_API_KEY", "from-env")
    assert api_key_of(ServeConfig()) == "from-env"
    (tmp_path / "key").write_text("from-file\n")
    assert api_key_of(ServeConfig(api_key_file=str(tmp_path / "key"))) == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        api_key_of(ServeConfig(api_key_file=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="cannot read it"):
        api_key_of(ServeConfig(api_key_file=str(tmp_path / "missing")))
