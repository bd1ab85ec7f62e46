"""One adapter per language in one command, interrupted and resumed, then served as a set with auto routing."""

import json
import signal
import subprocess
import sys
import time

import openai
import pytest

from bactrian.adapters import adapters_in
from bactrian.infer.engine import Engine
from bactrian.infer.server import engine_app

from support import LiveServer, make_config, needs_shared_data

QUESTIONS = {
    "es": "¿Puedes explicarme cómo funciona la fotosíntesis en las plantas verdes?",
    "ja": "植物の光合成の仕組みを説明してください。",
    "pt": "Você pode me explicar como funciona a fotossíntese nas plantas verdes?",
}


@pytest.fixture()
def three_languages(tmp_path):
    source = needs_shared_data("instructions", "multialpaca")
    folder = tmp_path / "data"
    folder.mkdir()
    for lang in QUESTIONS:
        lines = (source / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()[:40]
        (folder / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_per_language_run_interrupted_resumed_and_served(tiny_llama, three_languages, tmp_path):
    out = tmp_path / "adapters"
    command = [sys.executable, "-m", "bactrian", "finetune", "--per_language", "--lang", "es,ja,pt",
               "--base_model", str(tiny_llama), "--data_path", str(three_languages), "--output_dir", str(out),
               "--batch_size", "4", "--micro_batch_size", "2", "--max_steps", "40", "--save_steps", "3",
               "--val_set_size", "4", "--cutoff_len", "96", "--lora_r", "16", "--lora_alpha", "16",
               "--warmup_steps", "2", "--learning_rate", "1e-2", "--train_on_inputs", "False"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob("ja/checkpoint-*")) and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / "es" / "bactrian.json").is_file() and not (out / "ja" / "bactrian.json").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already trained, skipped" in rerun.stderr and "Resumed from" in rerun.stderr
    summary = json.loads((out / "summary.json").read_text())["languages"]
    assert list(summary) == ["es", "ja", "pt"] and all(m["steps"] == 40 for m in summary.values())
    assert "eval loss" in rerun.stdout and "ja" in rerun.stdout
    for lang in QUESTIONS:
        manifest = json.loads((out / lang / "bactrian.json").read_text())
        assert manifest["languages"] == [lang] and manifest["config"]["lora_r"] == 16
        card = (out / lang / "README.md").read_text()
        assert "PeftModel.from_pretrained" in card and f"(`{lang}`)" in card

    engine = Engine(str(tiny_llama), adapters_in(str(out)))
    with LiveServer(engine_app(engine)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["base", "es", "ja", "pt", "auto"]
        for lang, question in QUESTIONS.items():
            reply = client.chat.completions.create(model="auto", max_tokens=4, temperature=0,
                                                   messages=[{"role": "user", "content": question}])
            assert reply.model == lang


def test_one_process_group_serves_every_language(tiny_llama, lang_folder, tmp_path, monkeypatch):
    """Under torchrun the group is made once and closed once, at the end of the command (it used to be destroyed
    after each language and made again); the memory of each language's run is given back before the next loads."""
    from bactrian.train import distributed, per_language
    from bactrian.train.finetune import finetune

    closed, freed = [], []
    monkeypatch.setattr(distributed.DistributedContext, "close", lambda self: closed.append(1))
    monkeypatch.setattr(per_language, "free_memory", lambda: freed.append(1))
    results = finetune(make_config(tiny_llama, lang_folder, tmp_path / "adapters", lang=["fr", "de"],
                                   per_language=True, max_steps=1, val_set_size=0))
    assert set(results["languages"]) == {"fr", "de"} and closed == [1] and freed == [1, 1]
