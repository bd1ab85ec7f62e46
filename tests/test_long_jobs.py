"""Long jobs that never mix runs, leak keys or lose the last good state (each test failed before its fix)."""

import json
import logging
import time
from pathlib import Path

import pytest

from bactrian.data.translate import TranslateConfig, translate
from bactrian.endpoints.client import RateLimits, retry_after_seconds
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
        result = translate(TranslateConfig(input=str(source), lang=["de", "fr"], engine="google", api_key=SECRET,
                                           base_url=url, output_dir=str(out), concurrency=1))
    assert result["failed"] == 3 and sum(result["rows"].values()) == 3
    assert SECRET not in caplog.text
    for file in out.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file
    with LiveServer(flaky_google([401])) as url, pytest.raises(BactrianError) as refused:
        translate(TranslateConfig(input=str(source), lang=["it"], engine="google", api_key=SECRET, base_url=url,
                                  output_dir=str(tmp_path / "other")))
    assert SECRET not in str(refused.value) and "401" in str(refused.value)


def test_a_refused_key_mid_job_stops_it_with_the_endpoints_message_and_keeps_what_was_done(tmp_path):
    rows = [{"id": f"r{i}", "instruction": f"Sentence number {i}."} for i in range(4)]
    source = write_jsonl(tmp_path / "en.jsonl", rows)
    config = dict(input=str(source), lang=["de", "fr", "it", "es"], engine="google", api_key=SECRET,
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
    assert retry_after_seconds(header, RateLimits().max_delay) == expected


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
            export(ExportConfig(base_model=str(tiny_llama), lora_weights=[str(adapter)], output_dir=output,
                                overwrite=True))
    assert (work / "notes.txt").read_text() == "mine" and sorted(p.name for p in adapter.iterdir()) == before


def test_export_replaces_an_existing_output_only_once_the_new_one_is_complete(tiny_llama, tiny_adapters, tmp_path,
                                                                             monkeypatch):
    from bactrian.export import run
    from bactrian.export.config import ExportConfig

    out = tmp_path / "merged"
    config = ExportConfig(base_model=str(tiny_llama), lora_weights=[str(tiny_adapters["fr"])], output_dir=str(out),
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


ANSWERS = {"de": ["Die Hauptstadt von Frankreich ist Paris, eine große und schöne Stadt an der Seine.",
                  "Paris ist die Hauptstadt Frankreichs und hat viele berühmte Museen und Kirchen.",
                  "Frankreichs Regierung sitzt in Paris, wo auch der Präsident seinen Amtssitz hat."],
           "fr": ["La capitale de la France est Paris, une grande et belle ville au bord de la Seine.",
                  "Paris est la capitale du pays et compte de nombreux musées et églises célèbres.",
                  "Le gouvernement français siège à Paris, où le président a aussi sa résidence."]}


def teacher_app():
    """An OpenAI-compatible teacher on loopback that answers in the language of the (fake) translation."""
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "teacher", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        text = body["messages"][-1]["content"]
        answer = ANSWERS["fr" if "<fr>" in text else "de"][int(text.rsplit("(", 1)[1][0])]
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}}

    return app


def test_a_dataset_holds_exactly_what_the_current_recipe_produced(tmp_path):
    from bactrian.data.build import build

    write_jsonl(tmp_path / "en.jsonl", [{"id": f"q{i}", "instruction": f"What is the capital of France? ({i})"}
                                        for i in range(3)])
    out = tmp_path / "dataset"
    with LiveServer(flaky_google([])) as google, LiveServer(teacher_app()) as teacher:
        def run(langs, min_chars=1):
            recipe = tmp_path / "recipe.yaml"
            recipe.write_text(f"input: {tmp_path / 'en.jsonl'}\noutput_dir: {out}\nlangs: [{', '.join(langs)}]\n"
                              f"translate:\n  engine: google\n  base_url: {google}\n  api_key: {SECRET}\n"
                              f"generate:\n  model: teacher\n  base_url: {teacher}/v1\n"
                              f"filter:\n  min_chars: {min_chars}\n")
            return build(str(recipe))

        assert run(["de", "fr"])["rows"] == {"de": 3, "fr": 3}
        assert sorted(p.name for p in out.glob("*.parquet")) == ["de.parquet", "fr.parquet"]
        assert run(["de"])["rows"] == {"de": 3}
        assert sorted(p.name for p in out.glob("*.parquet")) == ["de.parquet"]
        for stage in ("translated", "generated", "filtered"):
            assert sorted(p.name for p in (out / "stages" / stage).glob("*.jsonl")) == ["de.jsonl"], stage
        assert "- fr" not in (out / "README.md").read_text()
        assert run(["de", "fr"], min_chars=10_000)["rows"] == {}  # a stricter filter empties every language
        assert list(out.glob("*.parquet")) == [] and list((out / "stages" / "filtered").glob("*.jsonl")) == []
    assert [p.name for p in out.rglob(".*")] == []  # no staging leftovers


def finetune_config(model, data, out, **overrides):
    from bactrian.train.config import FinetuneConfig

    settings = dict(base_model=str(model), data_path=[str(data)], output_dir=str(out), global_batch_size=4,
                    micro_batch_size=2, max_steps=4, val_set_size=0, warmup_steps=1, save_steps=2, save_total_limit=2,
                    learning_rate=1e-2, lora_dropout=0.0)
    settings.update(overrides)
    return FinetuneConfig(**settings)


@pytest.mark.parametrize("limit", [0, -1])
def test_impossible_checkpoint_limits_are_errors(tiny_llama, lang_folder, tmp_path, limit):
    from bactrian.train.finetune import finetune

    with pytest.raises(BactrianError, match=f"--save_total_limit {limit}: keep at least 1"):
        finetune(finetune_config(tiny_llama, lang_folder, tmp_path / "out", save_total_limit=limit))
    assert not (tmp_path / "out").exists()


def test_checkpoints_of_another_run_are_never_resumed_or_pruned(tiny_llama, lang_folder, tmp_path):
    from bactrian.train.finetune import finetune

    out = tmp_path / "out"
    finetune(finetune_config(tiny_llama, lang_folder, out, max_steps=6))  # leaves checkpoint-2 and -4
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-4"]
    with pytest.raises(BactrianError, match=r"checkpoint-2 belongs to another run \(learning_rate: 0.01 -> 0.02"):
        finetune(finetune_config(tiny_llama, lang_folder, out, max_steps=6, learning_rate=2e-2))
    with pytest.raises(BactrianError, match="lang: \\[\\] -> \\['de'\\].*max_steps: 6 -> 8"):
        finetune(finetune_config(tiny_llama, lang_folder, out, max_steps=8, lang=["de"],
                                 resume_from_checkpoint="auto"))
    (lang_folder / "fr.jsonl").write_text((lang_folder / "fr.jsonl").read_text().replace("chaud", "froid"))
    with pytest.raises(BactrianError, match=r"data file .*fr.jsonl changed"):
        finetune(finetune_config(tiny_llama, lang_folder, out, max_steps=6, resume_from_checkpoint="auto"))
    with pytest.raises(BactrianError, match=r"a checkpoint of another run \(data file .*fr.jsonl changed"):
        finetune(finetune_config(tiny_llama, lang_folder, tmp_path / "elsewhere", max_steps=6,
                                 resume_from_checkpoint=str(out / "checkpoint-4")))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == kept  # nothing pruned


def test_per_language_reruns_retrain_what_changed(tiny_llama, lang_folder, tmp_path, caplog):
    from bactrian.train.finetune import finetune

    out = tmp_path / "adapters"
    config = finetune_config(tiny_llama, lang_folder, out, per_language=True, lang=["de", "fr"], save_steps=0)
    first = finetune(config)["languages"]
    caplog.set_level(logging.INFO)
    (lang_folder / "fr.jsonl").write_text((lang_folder / "fr.jsonl").read_text().replace("chaud", "froid"))
    second = finetune(config)["languages"]
    assert second["de"] == first["de"] and "already trained, skipped (same settings and data)" in caplog.text
    assert "fr: trained by another run (data file" in caplog.text.replace(str(out) + "/", "")
    third = finetune(finetune_config(tiny_llama, lang_folder, out, per_language=True, lang=["de", "fr"],
                                     save_steps=0, max_steps=5))["languages"]
    assert third["de"]["steps"] == third["fr"]["steps"] == 5
    with pytest.raises(BactrianError, match="--per_language resumes each language"):
        finetune(finetune_config(tiny_llama, lang_folder, out, per_language=True,
                                 resume_from_checkpoint=str(out / "de")))


def test_checkpoints_are_flushed_before_they_are_renamed_and_leftovers_are_cleaned(tiny_llama, lang_folder, tmp_path,
                                                                                  monkeypatch):
    import os

    from bactrian.train.finetune import finetune

    out = tmp_path / "out"
    (out / ".checkpoint-7.partial").mkdir(parents=True)  # what a run killed mid-save leaves
    (out / ".adapter.partial").mkdir()
    events = []
    real_fsync, real_rename = os.fsync, Path.rename
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(Path, "rename", lambda self, target: events.append(("rename", str(self))) or
                        real_rename(self, target))
    finetune(finetune_config(tiny_llama, lang_folder, out, max_steps=4, save_steps=2))
    staging = str(out / ".checkpoint-2.partial")
    renamed = events.index(("rename", staging))
    flushed = {path for kind, path in events[:renamed] if kind == "fsync" and path.startswith(staging)}
    saved = {str(staging + "/" + p.name) for p in (out / "checkpoint-2").iterdir()}
    assert saved <= flushed and staging in flushed  # every file, and the folder itself
    assert not (out / ".checkpoint-7.partial").exists() and not (out / ".adapter.partial").exists()


def test_manifests_mask_secret_options(tmp_path):
    from bactrian.manifest import write_manifest

    write_manifest(tmp_path, "report", {"judge_api_key": "sk-live-123", "upstream_api_key": "", "model": "m"})
    manifest = json.loads((tmp_path / "bactrian.json").read_text())
    assert manifest["config"] == {"judge_api_key": "***", "upstream_api_key": "", "model": "m"}
