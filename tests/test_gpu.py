"""On a CUDA GPU, opt in (`BACTRIAN_TEST_GPU=1 pytest -m gpu`; benchmarks/gpu_check.py runs them): what the CPU
tests prove exactly in fp32 holds in bf16 within stated tolerances. Elsewhere every test runs on the CPU
(tests/conftest.py hides the GPUs), and these skip."""

import os

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    os.environ.get("BACTRIAN_TEST_GPU") != "1" or not torch.cuda.is_available(),
    reason="GPU tests run with BACTRIAN_TEST_GPU=1 on a machine with CUDA")]

LOGIT_TOLERANCE = 0.05  # of the logits' range: bf16 keeps 8 bits of mantissa


def test_the_engine_runs_in_the_rules_dtype_and_batched_logits_stay_close_to_alone(tiny_llama):
    from bactrian.infer.engine import Engine
    from bactrian.infer.requests import Request, SamplingParams
    from bactrian.models import auto_dtype

    engine = Engine(str(tiny_llama), dtype="auto")
    assert engine.device.type == "cuda" and engine.model.dtype == auto_dtype(engine.device).dtype
    prompts = [engine.catalog.render("base", text) for text in ("Name a colour.", "Bonjour !", "Zähle bis drei.")]
    width = max(map(len, prompts))
    pad = engine.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device="cuda")
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device="cuda")
    with torch.no_grad():
        together = engine.model(input_ids=ids, attention_mask=mask,
                                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1].float()
        alone = torch.cat([engine.model(input_ids=torch.tensor([p], device="cuda")).logits[:, -1].float()
                           for p in prompts])
    assert float((together - alone).abs().max()) <= LOGIT_TOLERANCE * float(alone.max() - alone.min())
    answers = engine.generate([Request(p, SamplingParams(max_new_tokens=8)) for p in prompts])
    assert all(reason in ("stop", "length") for _, reason, _ in answers)


def test_reductions_run_on_the_gpu_through_nccl():
    import socket

    import torch.distributed as dist

    from bactrian.train.distributed import DistributedContext

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        sums = torch.tensor([1.0, 2.0], dtype=torch.float64)  # on the CPU, as the trainer keeps them
        DistributedContext(rank=0, world_size=2).sum_(sums)
        assert sums.tolist() == [1.0, 2.0]
    finally:
        dist.destroy_process_group()


def test_bf16_training_is_independent_of_micro_batching_within_its_tolerance(tiny_llama, lang_folder, tmp_path):
    from bactrian.train.finetune import finetune

    from support import adapter_weights, make_config, max_difference

    one = finetune(make_config(tiny_llama, lang_folder, tmp_path / "mb1", micro_batch_size=1, bf16="auto"))
    four = finetune(make_config(tiny_llama, lang_folder, tmp_path / "mb4", micro_batch_size=4, bf16="auto"))
    assert abs(one["train_loss"] - four["train_loss"]) < 2e-2
    assert max_difference(adapter_weights(tmp_path / "mb1"), adapter_weights(tmp_path / "mb4")) < 2e-2
