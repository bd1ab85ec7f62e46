"""`auto` as a rule (models.auto_dtype), and what bf16 gives where fp32's exact guarantees do not hold: the
stated tolerances of README's Guarantees section. The exact guarantees are asserted elsewhere in fp32."""

import logging

import pytest
import torch

from bactrian import models
from bactrian.errors import ModelError
from bactrian.infer.engine import Engine
from bactrian.train.finetune import finetune
from bactrian.train.objectives import uses_bf16_autocast

from support import adapter_weights, make_config, max_difference

pytestmark = pytest.mark.dtype_sensitive  # runs under both choices of `auto` in .ci/run

CPU = torch.device("cpu")


@pytest.fixture()
def no_override(monkeypatch):
    monkeypatch.delenv(models.AUTO_DTYPE_VARIABLE, raising=False)


@pytest.mark.parametrize("instructions, dtype, reason", [
    ([], torch.float32, "the CPU has no bf16 matrix instructions (AMX, AVX512-BF16)"),
    (["AVX512-BF16"], torch.bfloat16, "the CPU has AVX512-BF16"),
    (["AMX", "AVX512-BF16"], torch.bfloat16, "the CPU has AMX and AVX512-BF16"),
])
def test_auto_follows_the_cpus_instructions(monkeypatch, no_override, instructions, dtype, reason):
    monkeypatch.setattr(models, "cpu_bf16_instructions", lambda: instructions)
    choices = {models.auto_dtype(CPU) for _ in range(3)}
    assert choices == {models.DtypeChoice(dtype, reason)}  # the same machine always gets the same choice
    assert uses_bf16_autocast("auto", CPU) == (dtype == torch.bfloat16)
    assert models.training_dtype("auto", CPU) == models.training_dtype("true", CPU) == torch.float32
    assert models.pick_dtype(CPU) == torch.float32  # on a CPU bf16 comes through --dtype or autocast, not the load


@pytest.mark.parametrize("capability, dtype", [((7, 0), torch.float32), ((7, 5), torch.float32),
                                                ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_on_a_gpu_follows_its_compute_capability(monkeypatch, no_override, capability, dtype):
    """V100 (7.0) and T4 (7.5) only emulate bf16 (torch.cuda.is_bf16_supported() says yes on them); A100 on runs it."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    choice = models.auto_dtype(torch.device("cuda"))
    assert choice.dtype == dtype and f"compute capability {capability[0]}.{capability[1]}" in choice.reason
    gpu = torch.device("cuda")
    assert models.pick_dtype(gpu) == dtype
    # training: bf16 weights and autocast where bf16 is native (LoRA and a quantized base's upcast parts compute
    # in bf16 too); --bf16 false keeps fp32 weights, as its help says
    assert uses_bf16_autocast("auto", gpu) == (dtype == torch.bfloat16)
    assert models.training_dtype("auto", gpu) == dtype and models.training_dtype("false", gpu) == torch.float32
    assert models.training_dtype("true", gpu) == torch.bfloat16


def test_tf32_is_allowed_for_training_on_gpus_that_have_it(monkeypatch):
    for capability, expected in (((7, 5), []), ((8, 0), ["high"])):
        asked = []
        monkeypatch.setattr(torch, "set_float32_matmul_precision", asked.append)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        models.allow_tf32(torch.device("cuda"))
        assert asked == expected
    models.allow_tf32(CPU)  # a CPU has no TF32: nothing to do
    assert asked == ["high"]


def test_the_variable_overrides_the_rule_and_is_checked(monkeypatch):
    monkeypatch.setattr(models, "cpu_bf16_instructions", lambda: ["AVX512-BF16"])
    monkeypatch.setenv(models.AUTO_DTYPE_VARIABLE, "float32")
    assert models.auto_dtype(CPU) == models.DtypeChoice(torch.float32, "set by $BACTRIAN_AUTO_DTYPE")
    monkeypatch.setenv(models.AUTO_DTYPE_VARIABLE, "fp8")
    with pytest.raises(ModelError, match=r"\$BACTRIAN_AUTO_DTYPE=fp8: choose float32 or bfloat16"):
        models.auto_dtype(CPU)


def test_the_engine_logs_what_auto_chose_and_why(tiny_llama, caplog):
    with caplog.at_level(logging.INFO, logger="bactrian.models"):
        engine = Engine(str(tiny_llama), [])
    choice = models.auto_dtype(CPU)
    assert choice.describe() in caplog.text
    assert engine.model.dtype == choice.dtype


def test_bf16_rows_batched_stay_within_the_stated_tolerance_of_rows_alone(tiny_llama):
    """In bf16 a row's logits depend on its batch (the kernels' blocking changes with the rows): within 2% of the
    logits' range, so greedy answers may differ where two tokens are closer than that. fp32 is exact (test_decoding)."""
    engine = Engine(str(tiny_llama), [], dtype="bfloat16")
    texts = ("Name a primary colour.", "Add", "Nenne das Gegenteil.")
    prompts = [engine.catalog.render("base", text) for text in texts]
    width = max(map(len, prompts))
    pad = engine.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        together = engine.model(input_ids=ids, attention_mask=mask,
                                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1].float()
        for row, prompt in enumerate(prompts):
            alone = engine.model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
            spread = float(alone.max() - alone.min())
            assert float((together[row] - alone).abs().max()) <= 0.02 * spread, row


def test_bf16_training_is_independent_of_micro_batching_within_its_tolerance(tiny_llama, lang_folder, tmp_path):
    """--bf16 true (what `auto` picks on a CPU with AMX or AVX512-BF16): the loss within 1% and the adapter within
    2e-3 across micro-batch sizes, where fp32 holds to 1e-5 (test_finetune)."""
    one = finetune(make_config(tiny_llama, lang_folder, tmp_path / "mb1", micro_batch_size=1, bf16="true"))
    four = finetune(make_config(tiny_llama, lang_folder, tmp_path / "mb4", micro_batch_size=4, bf16="true"))
    assert one["train_loss"] == pytest.approx(four["train_loss"], rel=1e-2)
    assert max_difference(adapter_weights(tmp_path / "mb1"), adapter_weights(tmp_path / "mb4")) < 2e-3


def test_finetune_logs_what_bf16_auto_chose(tiny_llama, lang_folder, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bactrian.train.objectives"):
        finetune(make_config(tiny_llama, lang_folder, tmp_path / "auto", bf16="auto", max_steps=1))
    assert f"bf16 auto: autocast {'on' if models.auto_dtype(CPU).dtype == torch.bfloat16 else 'off'}" in caplog.text
