"""Long jobs that never mix runs, leak keys or lose the last good state (each test failed before its fix)."""

import json
import logging
import time

import pytest

from bactrian.data.client import Limits, retry_after_seconds
from bactrian.data.translate import TranslateConfig, translate
from bactrian.errors import BactrianError

from conftest import write_jsonl
from test_server import LiveServer

SECRET = "g-secret-key-0123456789"


def flaky_google(answers: list):
    """A Google v2 endpoint on loopback answering each request with the next of `answers` (a status code)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/language/translate/v2")
    async def google(request: Request):
        body = await request.json()
        status = answers.pop(0) if answers else 200
        if request.headers.get("x-goog-api-key") != SECRET or request.query_params:
            return JSONResponse({"error": {"message": "key missing from the header"}}, status_code=400)
        if status != 200:
            return JSONResponse({"error": {"code": status, "message": "quota or key trouble"}}, status_code=status)
        return {"data": {"translations": [{"translatedText": f"<{body['target']}> {q}"} for q in body["q"]]}}

    return app


def test_no_key_in_logs_cache_outputs_or_errors(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    rows = [{"id": f"r{i}", "instruction": f"Sentence number {i}."} for i in range(3)]
    source = write_jsonl(tmp_path / "en.jsonl", rows)
    out = tmp_path / "out"
    with LiveServer(flaky_google([400, 200, 200])) as url:  # the first language fails for good (a 400)
        result = translate(TranslateConfig(input=str(source), langs=["de", "fr"], engine="google", api_key=SECRET,
                                           base_url=url, output_dir=str(out), concurrency=1))
    assert result["failed"] == 3 and sum(result["rows"].values()) == 3
    assert SECRET not in caplog.text
    for file in out.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file
    with LiveServer(flaky_google([401])) as url, pytest.raises(BactrianError) as refused:
        translate(TranslateConfig(input=str(source), langs=["it"], engine="google", api_key=SECRET, base_url=url,
                                  output_dir=str(tmp_path / "other")))
    assert SECRET not in str(refused.value) and "401" in str(refused.value)


def test_a_refused_key_mid_job_stops_it_with_the_endpoints_message_and_keeps_what_was_done(tmp_path):
    rows = [{"id": f"r{i}", "instruction": f"Sentence number {i}."} for i in range(4)]
    source = write_jsonl(tmp_path / "en.jsonl", rows)
    config = dict(input=str(source), langs=["de", "fr", "it", "es"], engine="google", api_key=SECRET,
                  output_dir=str(tmp_path / "out"), concurrency=1)
    answers = [200, 403, 200, 200]
    with LiveServer(flaky_google(answers)) as url:
        started = time.monotonic()
        with pytest.raises(BactrianError, match="refused the job.*403.*quota or key trouble"):
            translate(TranslateConfig(base_url=url, **config))
        assert time.monotonic() - started < 30  # stopped at once: no retries of a refusal
        answers.clear()
        result = translate(TranslateConfig(base_url=url, **config))
    assert result["usage"]["cached"] == 1 and result["usage"]["requests_sent"] == 3  # the first was kept
    assert result["rows"] == {"de": 4, "es": 4, "fr": 4, "it": 4}


@pytest.mark.parametrize("header, expected", [
    ("2", 2.0), ("-5", 0.0), ("1e9", 60.0), ("soon", None), ("nan", None), ("inf", None), ("", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after_values_are_clamped(header, expected):
    assert retry_after_seconds(header, Limits().max_delay) == expected


def test_retry_after_as_a_future_http_date():
    from email.utils import formatdate

    waited = retry_after_seconds(formatdate(time.time() + 30, usegmt=True), 60)
    assert 25 <= waited <= 31


def test_export_refuses_outputs_that_would_destroy_inputs(tiny_llama, tiny_adapters, tmp_path, monkeypatch):
    from bactrian.export.config import ExportConfig
    from bactrian.export.run import export

    adapter = tiny_adapters["fr"]
    before = sorted(p.name for p in adapter.iterdir())
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for output, message in ((".", "working directory"), (str(tmp_path), "working directory"),
                            (str(adapter), "overlaps the input"), (str(adapter.parent), "overlaps the input"),
                            (str(adapter / "merged"), "overlaps the input"), (str(tiny_llama), "overlaps the input")):
        with pytest.raises(BactrianError, match=message):
            export(ExportConfig(base_model=str(tiny_llama), lora_weights=str(adapter), output_dir=output,
                                overwrite=True))
    assert (work / "notes.txt").read_text() == "mine" and sorted(p.name for p in adapter.iterdir()) == before


def test_export_replaces_an_existing_output_only_once_the_new_one_is_complete(tiny_llama, tiny_adapters, tmp_path,
                                                                             monkeypatch):
    from bactrian.export import run
    from bactrian.export.config import ExportConfig

    out = tmp_path / "merged"
    config = ExportConfig(base_model=str(tiny_llama), lora_weights=str(tiny_adapters["fr"]), output_dir=str(out),
                          overwrite=True)
    run.export(config)
    first = (out / "bactrian.json").read_text()
    (tmp_path / ".merged.partial-killed").mkdir()  # what a killed run leaves behind
    real_write = run._write

    def dies_half_way(config, base, adapter, staging, gguf):
        real_write(config, base, adapter, staging, gguf)
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_write", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        run.export(config)
    assert (out / "bactrian.json").read_text() == first and (out / "model.safetensors").is_file()
    monkeypatch.setattr(run, "_write", real_write)
    (out / "from-the-old-export.txt").write_text("old")
    run.export(config)
    assert not (out / "from-the-old-export.txt").exists() and (out / "model.safetensors").is_file()  # replaced
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
