"""Fine-tuning: the loss, packing, the saved adapter with its real consumer (peft), errors, resume, DDP."""

import json

import pytest
import torch

from bactrian.errors import BactrianError, ConfigError, DataError, ModelError
from bactrian.models import load_model
from bactrian.prompts import load_template
from bactrian.train import dataset as ds
from bactrian.train.finetune import attach_lora, finetune, prepare_examples
from bactrian.train.loss import token_losses

from support import adapter_weights, kill_then_resume, make_config, max_difference, run_ddp


def gradients(model, micro_batches, total_targets) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss = 0.0
    for micro in micro_batches:
        losses, _ = token_losses(model, micro)
        (losses.sum() / total_targets).backward()
        loss += float(losses.detach().sum()) / total_targets
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return {"loss": torch.tensor(loss), **grads}


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma"])
def test_packed_and_unpacked_give_the_same_loss_and_gradients(request, arch, lang_folder, tmp_path):
    model_dir = request.getfixturevalue(arch)
    config = make_config(model_dir, lang_folder, tmp_path / "out", val_set_size=0)
    loaded = load_model(config.base_model)
    train, _ = prepare_examples(config, loaded.tokenizer, load_template(config.prompt_template_name))
    model = attach_lora(loaded, config)
    with torch.no_grad():  # make LoRA B non-zero so the adapter takes part in the gradients
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    batch = train.take(range(12))
    total = sum(example.num_targets for example in batch)
    pad = loaded.tokenizer.pad_token_id
    padded = gradients(model, ds.micro_batches(batch, 3, pad, False, 256, False), total)
    packed_batches = ds.micro_batches(batch, 2, pad, True, 160, False)
    assert len(packed_batches[0].examples) > packed_batches[0].input_ids.shape[0]  # rows hold several examples
    packed = gradients(model, packed_batches, total)
    assert max_difference(padded, packed) <= 1e-4
    assert float(padded["loss"]) > 0


def test_loss_does_not_depend_on_micro_batching(tiny_llama, lang_folder, tmp_path):
    one = finetune(make_config(tiny_llama, lang_folder, tmp_path / "mb1", micro_batch_size=1))
    four = finetune(make_config(tiny_llama, lang_folder, tmp_path / "mb4", micro_batch_size=4))
    assert abs(one["train_loss"] - four["train_loss"]) < 1e-5
    assert max_difference(adapter_weights(tmp_path / "mb1"), adapter_weights(tmp_path / "mb4")) < 1e-5


def test_adapter_loads_with_peft_and_changes_the_model(tiny_llama, lang_folder, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    metrics = finetune(make_config(tiny_llama, lang_folder, out, lora_target_modules=["q_proj", "k_proj",
                                                                                       "v_proj", "o_proj"]))
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "adapter_model.safetensors").stat().st_size > 1000
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = torch.tensor([[2, 10, 20, 30, 40]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, out)
    assert tuned.peft_config["default"].r == 8
    assert not torch.allclose(before, tuned(ids).logits)
    manifest = json.loads((out / "bactrian.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["template"]["name"] == "bactrian"
    assert manifest["languages"] == ["de", "en", "fr"]
    assert manifest["config"]["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert {entry["path"].rsplit("/", 1)[-1] for entry in manifest["data"]} == {"de.jsonl", "en.jsonl",
                                                                                 "fr.jsonl"}
    assert all(len(entry["sha256"]) == 64 for entry in manifest["data"])
    assert manifest["base_model"]["config_sha256"]
    assert set(manifest["metrics"]["eval_loss_per_lang"]) == {"de", "en", "fr"}
    assert manifest["metrics"] == metrics


def test_eval_loss_per_language_and_temperature_sampling(tiny_llama, lang_folder, tmp_path):
    metrics = finetune(make_config(tiny_llama, lang_folder, tmp_path / "t", lang=["en", "fr"],
                                   lang_temperature=3.0, val_set_size=4))
    assert set(metrics["eval_loss_per_lang"]) == {"en", "fr"}
    weights = {"en": 2, "fr": 2}
    expected = sum(metrics["eval_loss_per_lang"][k] * w for k, w in weights.items()) / 4
    assert metrics["eval_loss"] == pytest.approx(expected, rel=0.2)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(prompt_template_name="vicuna"), ConfigError, "Unknown prompt template 'vicuna'"),
    (dict(lang=["sw"]), DataError, "sw asked for with --lang but not found"),
    (dict(lora_target_modules=["query_key_value"]), ConfigError, "query_key_value: not in this model"),
    (dict(global_batch_size=6, micro_batch_size=4), ConfigError, "not divisible"),
])
def test_bad_input_fails_before_training(tiny_llama, lang_folder, tmp_path, overrides, error, message):
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        finetune(make_config(tiny_llama, lang_folder, out, **overrides))
    assert not out.exists()


def test_empty_dataset_is_an_error(tiny_llama, tmp_path):
    (tmp_path / "en.jsonl").write_text("\n")
    with pytest.raises(BactrianError, match="No instruction records"):
        finetune(make_config(tiny_llama, tmp_path / "en.jsonl", tmp_path / "out"))


def test_tensorboard_reporting(tiny_llama, lang_folder, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    finetune(make_config(tiny_llama, lang_folder, tmp_path / "tb", report_to="tensorboard"))
    events = EventAccumulator(str(tmp_path / "tb" / "runs"))
    events.Reload()
    logged = json.loads((tmp_path / "tb" / "trainer_state.json").read_text())["log_history"]
    written = {event.step: event.value for event in events.Scalars("train_loss")}  # the final summary repeats step 4
    assert written == {entry["step"]: pytest.approx(entry["train_loss"], rel=1e-6) for entry in logged}
    assert [event.step for event in events.Scalars("eval_loss")] == [0, 4]  # before training and at the end
    assert {tag.split("/")[1] for tag in events.Tags()["scalars"] if tag.startswith("eval_loss/")} == {"de", "en",
                                                                                                        "fr"}


def test_sigkill_and_resume_matches_an_uninterrupted_run(tiny_llama, lang_folder, tmp_path):
    common = dict(max_steps=60, global_batch_size=4, micro_batch_size=2, lora_dropout=0.1, learning_rate=3e-3,
                  cutoff_len=256, val_set_size=0)
    reference = make_config(tiny_llama, lang_folder, tmp_path / "straight", **common)
    finetune(reference)
    kill_then_resume(make_config(tiny_llama, lang_folder, tmp_path / "killed", save_steps=3, **common))
    assert max_difference(adapter_weights(tmp_path / "straight"), adapter_weights(tmp_path / "killed")) <= 1e-6


def test_two_process_ddp_matches_single_process(tiny_llama, lang_folder, tmp_path):
    settings = dict(max_steps=3, global_batch_size=8, micro_batch_size=2, val_set_size=4, learning_rate=1e-2)
    single = make_config(tiny_llama, lang_folder, tmp_path / "single", **settings)
    finetune(single)
    result = run_ddp(make_config(tiny_llama, lang_folder, tmp_path / "ddp", **settings), 29533)
    assert result.stdout.count("Adapter saved to") == 1  # rank 0 alone saves and reports
    assert max_difference(adapter_weights(tmp_path / "single"), adapter_weights(tmp_path / "ddp")) <= 1e-5
    single_metrics = json.loads((tmp_path / "single" / "bactrian.json").read_text())["metrics"]
    ddp_metrics = json.loads((tmp_path / "ddp" / "bactrian.json").read_text())["metrics"]
    assert ddp_metrics["eval_loss"] == pytest.approx(single_metrics["eval_loss"], abs=1e-5)


def test_bf16_autocast_trains_to_the_eval_loss_of_fp32(tiny_llama, lang_folder, tmp_path):
    """--bf16 true (what `auto` picks on AMX / AVX512-BF16 CPUs): fp32 weights and optimizer, bf16 matmuls; the
    eval loss stays within 2% of fp32's."""
    settings = dict(max_steps=8, val_set_size=6, learning_rate=1e-2, lora_r=8)
    fp32 = finetune(make_config(tiny_llama, lang_folder, tmp_path / "fp32", bf16="false", **settings))
    bf16 = finetune(make_config(tiny_llama, lang_folder, tmp_path / "bf16", bf16="true", **settings))
    assert fp32["eval_loss"] < fp32["eval_loss_at_start"]
    assert bf16["eval_loss"] == pytest.approx(fp32["eval_loss"], rel=0.02)
    assert bf16["eval_loss"] != fp32["eval_loss"]  # bf16 did run
    weights = adapter_weights(tmp_path / "bf16")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())


def test_a_diverging_run_stops_naming_the_step_and_the_last_good_checkpoint(tiny_llama, lang_folder, tmp_path):
    """It used to go on to the end and save an adapter of NaN as finished."""
    from bactrian.errors import TrainingError

    out = tmp_path / "diverged"
    with pytest.raises(TrainingError, match=r"the loss of step \d+ is nan: training diverged.*last good checkpoint "
                                            r"is .*checkpoint-\d+"):
        finetune(make_config(tiny_llama, lang_folder, out, learning_rate=1e37, max_grad_norm=0.0, save_steps=1,
                             save_total_limit=5, max_steps=8))
    assert not (out / "adapter_model.safetensors").exists()
    for checkpoint in out.glob("checkpoint-*"):
        assert all(torch.isfinite(tensor).all() for tensor in adapter_weights(checkpoint).values())


def test_a_checkpoint_holding_nan_is_not_resumed(tiny_llama, lang_folder, tmp_path):
    from safetensors.torch import save_file

    from bactrian.errors import TrainingError

    out = tmp_path / "run"
    finetune(make_config(tiny_llama, lang_folder, out, save_steps=2, max_steps=4))
    weights = adapter_weights(out / "checkpoint-2")
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, str(out / "checkpoint-2" / "adapter_model.safetensors"))
    (out / "adapter_model.safetensors").unlink()
    with pytest.raises(TrainingError, match="checkpoint-2: its adapter is damaged.*hold NaN or inf"):
        finetune(make_config(tiny_llama, lang_folder, out, save_steps=2, max_steps=4,
                             resume_from_checkpoint=str(out / "checkpoint-2")))


def test_resume_auto_falls_back_past_a_truncated_checkpoint(tiny_llama, lang_folder, tmp_path, caplog):
    """A truncated checkpoint was a raw SafetensorError; `auto` now resumes from the previous readable one and
    still ends with the uninterrupted run's weights."""
    import logging

    common = dict(max_steps=6, save_steps=2, save_total_limit=3)
    finetune(make_config(tiny_llama, lang_folder, tmp_path / "straight", **common))
    out = tmp_path / "damaged"
    finetune(make_config(tiny_llama, lang_folder, out, **common))
    weights = out / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    (out / "adapter_model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="bactrian.train.loop"):
        finetune(make_config(tiny_llama, lang_folder, out, resume_from_checkpoint="auto", **common))
    assert "checkpoint-4 cannot be resumed" in caplog.text and "falling back to" in caplog.text
    assert max_difference(adapter_weights(tmp_path / "straight"), adapter_weights(out)) <= 1e-6
    weights.write_bytes(weights.read_bytes()[:300])  # the resumed run saved checkpoint-4 anew
    with pytest.raises(ModelError, match=r"checkpoint-4/adapter_model.safetensors: not a readable safetensors file"):
        finetune(make_config(tiny_llama, lang_folder, out, resume_from_checkpoint=str(out / "checkpoint-4"),
                             **common))
