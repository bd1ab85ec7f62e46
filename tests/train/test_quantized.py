"""--load_4bit / --load_8bit without CUDA (bitsandbytes' CPU backend, 0.50 on): QLoRA training to a PEFT adapter,
generation and serving on a 4-bit base, and export of a QLoRA adapter onto the full-precision base."""

import json
import logging

import openai
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from bactrian.errors import ModelError
from bactrian.export.config import ExportConfig
from bactrian.export.run import export
from bactrian.infer.engine import Engine
from bactrian.infer.requests import Request, SamplingParams
from bactrian.infer.server import engine_app
from bactrian.models import load_model
from bactrian.train.finetune import finetune

from support import LiveServer, adapter_weights, make_config

bitsandbytes = pytest.importorskip("bitsandbytes", reason="the quantization extra (bitsandbytes) is not installed")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """Hidden size 64: bitsandbytes' CPU kernels quantize in blocks of 64 along a layer's input."""
    from support import build_model

    return build_model(tmp_path_factory.mktemp("tiny-llama-64"), "llama", hidden=64)


@pytest.fixture(scope="module")
def qlora_adapter(tiny_llama, tmp_path_factory):
    from support import SAMPLE, sample_rows, write_jsonl

    data = tmp_path_factory.mktemp("qlora-data")
    for lang in SAMPLE:
        write_jsonl(data / f"{lang}.jsonl", sample_rows(lang, copies=4))
    out = tmp_path_factory.mktemp("qlora") / "adapter"
    metrics = finetune(make_config(tiny_llama, data, out, load_4bit=True, max_steps=3,
                                   lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    return out, metrics


def test_4bit_and_8bit_bases_load_on_the_cpu(tiny_llama):
    for flags, layer in (((False, True), bitsandbytes.nn.Linear4bit), ((True, False), bitsandbytes.nn.Linear8bitLt)):
        loaded = load_model(str(tiny_llama), *flags, device=torch.device("cpu"), dtype=torch.float32)
        quantized = [module for module in loaded.model.modules() if isinstance(module, layer)]
        assert quantized and loaded.model.device.type == "cpu"


def test_qlora_trains_every_lora_tensor_into_a_peft_adapter(qlora_adapter, tiny_llama):
    out, metrics = qlora_adapter
    weights = adapter_weights(out)
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert all(float(tensor.abs().max()) > 0 for name, tensor in weights.items() if "lora_B" in name)  # all moved
    assert json.loads((out / "bactrian.json").read_text())["config"]["load_4bit"] is True
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tuned = PeftModel.from_pretrained(base, out).eval()
    ids = torch.tensor([[2, 45, 120, 33]])
    with torch.no_grad(), tuned.disable_adapter():
        plain = tuned(ids).logits
    with torch.no_grad():
        assert not torch.allclose(tuned(ids).logits, plain, atol=1e-4)
    assert metrics["eval_loss"] == metrics["eval_loss"]  # finite, not NaN


def test_8bit_lora_trains(tiny_llama, lang_folder, tmp_path):
    finetune(make_config(tiny_llama, lang_folder, tmp_path / "int8", load_8bit=True, max_steps=2))
    assert all(torch.isfinite(tensor).all() for tensor in adapter_weights(tmp_path / "int8").values())


def test_generate_and_serve_on_a_4bit_base_with_its_qlora_adapter(qlora_adapter, tiny_llama):
    out, _ = qlora_adapter
    engine = Engine(str(tiny_llama), [f"qlora={out}"], load_4bit=True, dtype="float32")
    assert any(isinstance(module, bitsandbytes.nn.Linear4bit) for module in engine.model.modules())
    prompt = engine.catalog.render("qlora", "Name a primary colour.")
    request = Request(prompt, SamplingParams(max_new_tokens=8), "qlora")
    first, again = engine.generate([request]), engine.generate([request])
    assert first == again and first[0][2] > 0
    with LiveServer(engine_app(engine)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        answers = [client.completions.create(model="qlora", prompt="Name a primary colour.", max_tokens=8,
                                             temperature=0)
                   for _ in range(2)]
    assert answers[0].usage.completion_tokens > 0 and answers[0].choices[0].text == answers[1].choices[0].text


def test_export_of_a_qlora_adapter_merges_onto_the_full_precision_base(qlora_adapter, tiny_llama, tmp_path, caplog):
    out, _ = qlora_adapter
    with caplog.at_level(logging.WARNING, logger="bactrian.export.run"):
        merged_dir = export(ExportConfig(base_model=str(tiny_llama), lora_weights=[str(out)],
                                         output_dir=str(tmp_path / "merged"), format="hf"))
    assert "trained on a 4-bit base" in caplog.text
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), out).eval()
    ids = torch.tensor([[2, 45, 120, 33, 78]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-4)


def test_a_bitsandbytes_without_a_cpu_backend_gets_a_clear_error(tiny_llama, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", broken)
    with pytest.raises(ModelError, match=r"--load_4bit: bitsandbytes .* cannot run its quantized layers on this CPU"):
        load_model(str(tiny_llama), load_4bit=True, device=torch.device("cpu"))


def test_a_kbit_base_computes_in_bf16_where_it_trains_in_bf16():
    """PEFT's k-bit preparation upcasts norms, embeddings and head to fp32, making the residual stream fp32; with
    bf16 compute they go back to bf16, and the int8 weights stay as they are."""
    from bactrian.train.finetune import keep_in_dtype

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4))
    model.register_buffer("codes", torch.zeros(3, dtype=torch.int8))
    frozen = torch.nn.Parameter(torch.zeros(2, dtype=torch.int8), requires_grad=False)
    model.register_parameter("int8_weight", frozen)
    keep_in_dtype(model, torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32, torch.int8}
    keep_in_dtype(model, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16, torch.int8}
