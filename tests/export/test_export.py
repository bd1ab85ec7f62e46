"""`bactrian export`: each format proven with the program that reads it (transformers, torch, llama.cpp); an
output never over its inputs, and an existing one replaced only once the new one is complete."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from bactrian.errors import BactrianError, ConfigError, ModelError
from bactrian.export.config import ExportConfig
from bactrian.export.run import export
from bactrian.export.state_dict import meta_name, permute

from support import build_model, in_child, make_adapter

PROMPTS = [[2, 45, 120, 33, 78], [2, 300, 12], [2, 7, 7, 7, 250, 19, 88, 140], [2, 99]]


@pytest.fixture(scope="module")
def peaked(tmp_path_factory):
    """Tiny llama and gemma3 with larger random weights, so greedy choices are not near-ties."""
    root = tmp_path_factory.mktemp("peaked")
    models = {arch: build_model(root / arch, arch, hidden=64, initializer_range=0.2, tie=False)
              for arch in ("llama", "gemma3")}
    adapters = {arch: make_adapter(models[arch], root / f"{arch}-lora", ["en"], seed=3, r=8,
                                   targets=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj"))
                for arch in models}
    return models, adapters


def run_export(tmp_path, base, adapter, fmt, **extra) -> Path:
    out = tmp_path / f"{fmt}-{extra.get('gguf_type', extra.get('dtype', 'x'))}"
    return export(ExportConfig(base_model=str(base), lora_weights=[str(adapter)] if adapter else [],
                               output_dir=str(out), format=fmt, **extra))


def reference(base, adapter):
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    return model


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_hf_merge_equals_base_plus_adapter(peaked, tmp_path, arch):
    models, adapters = peaked
    out = run_export(tmp_path, models[arch], adapters[arch], "hf", max_shard_size_mb=0)
    assert (out / "model.safetensors.index.json").is_file()  # one tensor per shard at this limit
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tuned = reference(models[arch], adapters[arch])
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, tuned(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(models[arch])(ids).logits,
                                  atol=1e-3)
    assert AutoTokenizer.from_pretrained(out).pad_token == "<pad>"
    assert (out / "generation_config.json").is_file()
    manifest = json.loads((out / "bactrian.json").read_text())
    assert manifest["kind"] == "export" and len(manifest["adapter"]["sha256"]) == 64


def test_hf_half_precision(peaked, tmp_path):
    models, adapters = peaked
    out = run_export(tmp_path, models["llama"], adapters["llama"], "hf", dtype="bfloat16")
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_state_dict_maps_back_to_the_merged_weights_exactly(peaked, tmp_path):
    models, adapters = peaked
    merged_dir = run_export(tmp_path, models["llama"], adapters["llama"], "hf")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).state_dict()
    out = run_export(tmp_path, models["llama"], adapters["llama"], "state_dict")
    state = torch.load(out / "consolidated.00.pth", weights_only=True)
    params = json.loads((out / "params.json").read_text())
    assert params == {"dim": 64, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "norm_eps": 1e-6, "vocab_size": 400,
                      "hidden_dim": 128, "rope_theta": 10000.0}
    for name, tensor in merged.items():
        meta = state[meta_name(name)]
        if name.endswith("q_proj.weight"):
            meta = permute(meta, params["n_heads"])
        elif name.endswith("k_proj.weight"):
            meta = permute(meta, params["n_kv_heads"])
        assert torch.equal(meta, tensor), name


def greedy_transformers(model, prompt, steps=8):
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, pad_token_id=0,
                                eos_token_id=None)
    return output[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("gguf_type", ["f32", "f16"])
def test_gguf_greedy_tokens_match_transformers(peaked, tmp_path, arch, gguf_type):
    pytest.importorskip("llama_cpp")
    models, adapters = peaked
    out = run_export(tmp_path, models[arch], adapters[arch], "gguf", gguf_type=gguf_type)
    hf = AutoModelForCausalLM.from_pretrained(run_export(tmp_path, models[arch], adapters[arch], "hf")).eval()
    base = AutoModelForCausalLM.from_pretrained(models[arch]).eval()
    answers = in_child("greedy", model=str(next(out.glob("*.gguf"))), prompts=PROMPTS)
    for prompt, tokens in zip(PROMPTS, answers):
        assert tokens == greedy_transformers(hf, prompt), prompt
        assert len(set(tokens)) > 3 and tokens != greedy_transformers(base, prompt)  # a real, tuned answer


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gguf_q8_0_stays_close(peaked, tmp_path, arch):
    pytest.importorskip("llama_cpp")
    models, adapters = peaked
    out = run_export(tmp_path, models[arch], adapters[arch], "gguf", gguf_type="q8_0")
    hf = AutoModelForCausalLM.from_pretrained(run_export(tmp_path, models[arch], adapters[arch], "hf")).eval()
    scores = in_child("last_logits", model=str(next(out.glob("*.gguf"))), prompts=PROMPTS)
    for prompt, row in zip(PROMPTS, scores):
        quantized = torch.tensor(row)
        with torch.no_grad():
            exact = hf(torch.tensor([prompt])).logits[0, -1]
        assert int(quantized.argmax()) == int(exact.argmax())
        assert float((quantized - exact).abs().max()) < 0.05 * float(exact.max() - exact.min())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gguf_lora_adapter_applied_by_llama_cpp(peaked, tmp_path, arch):
    pytest.importorskip("llama_cpp")
    models, adapters = peaked
    base_gguf = next(run_export(tmp_path, models[arch], None, "gguf", gguf_type="f32").glob("*.gguf"))
    lora_gguf = next(run_export(tmp_path, models[arch], adapters[arch], "gguf_adapter").glob("*.gguf"))
    tuned = reference(models[arch], adapters[arch])
    answers = in_child("greedy", model=str(base_gguf), prompts=PROMPTS, lora=str(lora_gguf))
    for prompt, tokens in zip(PROMPTS, answers):
        assert tokens == greedy_transformers(tuned, prompt), prompt


def test_errors_leave_nothing_behind(peaked, tmp_path, tiny_llama):
    models, adapters = peaked
    zero = tmp_path / "zero"
    from peft import LoraConfig, get_peft_model

    get_peft_model(AutoModelForCausalLM.from_pretrained(models["llama"]),
                   LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(zero)
    cases = [
        (dict(lora_weights=[str(zero)]), "changes nothing"),
        (dict(lora_weights=[str(adapters["llama"])], base_model=str(tiny_llama)), "trained on another base"),
        (dict(lora_weights=[str(tmp_path / "nowhere")]), "adapter_config.json is missing"),
        (dict(lora_weights=[str(adapters["gemma3"])], base_model=str(models["gemma3"]), format="state_dict"),
         "Meta LLaMA layout"),
    ]
    for overrides, message in cases:
        settings = dict(base_model=str(models["llama"]), output_dir=str(tmp_path / "out"), format="hf")
        with pytest.raises(ModelError, match=message):
            export(ExportConfig(**{**settings, **overrides}))
        assert not (tmp_path / "out").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(BactrianError, match="not empty"):
        export(ExportConfig(base_model=str(models["llama"]), lora_weights=[str(adapters["llama"])],
                            output_dir=str(full)))
    assert (full / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_adapter_holding_nan_is_not_exported(peaked, tmp_path):
    from safetensors.torch import load_file, save_file

    models, adapters = peaked
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(adapters["llama"], broken)
    weights = load_file(str(broken / "adapter_model.safetensors"))
    name = sorted(weights)[0]
    weights[name][0, 0] = float("inf")
    save_file(weights, str(broken / "adapter_model.safetensors"))
    with pytest.raises(ModelError, match="hold NaN or inf"):
        run_export(tmp_path, models["llama"], broken, "hf")
    assert not (tmp_path / "hf-x").exists()


def test_a_truncated_adapter_is_one_line_naming_the_file(peaked, tmp_path):
    import shutil

    models, adapters = peaked
    cut = tmp_path / "cut"
    shutil.copytree(adapters["llama"], cut)
    weights = cut / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ModelError, match=r"cut/adapter_model.safetensors: not a readable safetensors file"):
        run_export(tmp_path, models["llama"], cut, "hf")


def test_one_adapter_per_export_and_the_old_dtype_names_still_work(tiny_llama, tiny_adapters, tmp_path, caplog):
    from bactrian.cli import build_config, build_parser

    config = build_config(ExportConfig, build_parser().parse_args(
        ["export", "--lora_weights", f"fr={tiny_adapters['fr']}", "--dtype", "bf16", "--output_dir", "x"]))
    assert config.dtype == "bfloat16" and "--dtype bf16 is deprecated: it is now bfloat16" in caplog.text
    with pytest.raises(ConfigError, match="merges one adapter; 2 were given"):
        export(ExportConfig(base_model=str(tiny_llama), lora_weights=[str(tiny_adapters["fr"]),
                            str(tiny_adapters["de"])], output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


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
