"""Real behaviour on the embedded default (Gemma 3 270M): slow, run with -m slow."""

import json
import subprocess
import sys

import pytest
import torch

from bactrian.train.config import FinetuneConfig
from bactrian.train.finetune import finetune

from support import in_child, needs_shared_data, parameter_bytes

pytestmark = pytest.mark.slow


def test_finetune_default_on_real_multilingual_data_learns_and_loads_in_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = needs_shared_data("instructions", "multialpaca")
    out = tmp_path / "gemma-lora"
    metrics = finetune(FinetuneConfig(
        base_model="default", data_path=[str(data)], lang=["es", "ja"], output_dir=str(out), global_batch_size=8,
        micro_batch_size=8, max_steps=8, learning_rate=1e-3, cutoff_len=128, val_set_size=16, lora_r=8,
        lora_target_modules=["q_proj", "v_proj"], train_on_inputs=False, warmup_steps=1, eval_steps=0,
        save_steps=0, packing=True))
    assert metrics["eval_loss"] < metrics["eval_loss_at_start"]
    assert set(metrics["eval_loss_per_lang"]) == {"es", "ja"}
    manifest = json.loads((out / "bactrian.json").read_text())
    base_path = manifest["base_model"]
    assert base_path["spec"] == "default" and base_path["gguf_sha256"]
    from bactrian.models import resolve

    base = AutoModelForCausalLM.from_pretrained(resolve("default").path)
    tuned = PeftModel.from_pretrained(base, out)
    ids = torch.tensor([[2, 10354, 13065, 236787, 107]])
    with torch.no_grad():
        with tuned.disable_adapter():
            before = tuned(ids).logits
        after = tuned(ids).logits
    assert not torch.allclose(before, after)


@pytest.mark.dtype_sensitive
def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bactrian", "demo", "--output_dir", str(tmp_path / "demo"),
                             "--max_steps", "6", "--max_new_tokens", "8"], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("  tuned: ") == 6 and result.stdout.count("  base : ") == 6
    assert "Next, try:" in result.stdout
    assert (tmp_path / "demo" / "adapter" / "adapter_model.safetensors").is_file()


def test_52_rank16_adapters_on_the_default_add_only_their_own_size(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bactrian.infer.engine import Engine
    from bactrian.models import resolve

    names = [f"a{i}" for i in range(52)]
    config = LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve("default").path), config,
                           adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    model.save_pretrained(tmp_path)  # each adapter in tmp_path/<name>/
    del model
    base = Engine("default")
    base_bytes = parameter_bytes(base.model)
    del base
    many = Engine("default", [f"{name}={tmp_path / name}" for name in names])
    adapter_bytes = sum((tmp_path / name / "adapter_model.safetensors").stat().st_size for name in names)
    assert 0 < parameter_bytes(many.model) - base_bytes <= adapter_bytes


def test_gguf_round_trip_through_llama_cpp_on_the_default(tmp_path):
    pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM

    from bactrian.demo import demo_data_dir
    from bactrian.export.config import ExportConfig
    from bactrian.export.run import export

    adapter = tmp_path / "adapter"
    finetune(FinetuneConfig(base_model="default", data_path=[str(demo_data_dir())], output_dir=str(adapter),
                            global_batch_size=8, micro_batch_size=8, max_steps=4, learning_rate=2e-3, val_set_size=0,
                            lora_r=8, lora_target_modules=["q_proj", "v_proj"], warmup_steps=1, save_steps=0,
                            packing=True, train_on_inputs=False))
    out = export(ExportConfig(base_model="default", lora_weights=[str(adapter)], output_dir=str(tmp_path / "gguf"),
                              format="gguf", gguf_type="f32"))
    merged = AutoModelForCausalLM.from_pretrained(
        export(ExportConfig(base_model="default", lora_weights=[str(adapter)], output_dir=str(tmp_path / "hf"))))
    prompts = ["### Input:\nNenne drei Farben.\n\n### Output:\n", "### Input:\n法国的首都是哪里？\n\n### Output:\n",
               "### Input:\nWhat is water made of?\n\n### Output:\n"]
    answers = in_child("greedy_text", model=str(next(out.glob("*.gguf"))), prompts=prompts)
    for prompt, answer in zip(prompts, answers):
        expected = merged.generate(torch.tensor([answer["ids"]]), max_new_tokens=8, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(answer["ids"]):].tolist()
        assert answer["tokens"] == expected, prompt
