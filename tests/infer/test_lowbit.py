"""int8 for decoding (`--quantization int8`): the base's linear layers and the head in int8 (weights per output
channel, activations per token, int32 accumulation), the down projection and LoRA's matrices in full precision;
products close to fp32's; a row's answer independent of its batch; never chosen by `auto`; the mode reported
where the user sees it."""

import pytest
import torch

from bactrian.infer import lowbit
from bactrian.infer.engine import Engine
from bactrian.infer.requests import Request, SamplingParams
from bactrian.infer.routing import BASE

from support import PROMPTS


@pytest.mark.parametrize("bias", [True, False])
def test_an_int8_layer_computes_what_the_linear_does_within_its_rounding(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(640, 2048, bias=bias)
    x = torch.randn(5, 3, 640)
    exact, approximate = linear(x), lowbit.Int8Linear(linear)(x)
    assert approximate.shape == exact.shape and approximate.dtype == exact.dtype
    assert float((approximate - exact).abs().max()) < 0.02 * float(exact.abs().max())
    assert lowbit.Int8Linear(linear)(x.bfloat16()).dtype == torch.bfloat16


def test_the_base_and_the_head_are_int8_and_lora_stays_full_precision(tiny_gemma, tmp_path):
    from support import make_adapter

    adapter = make_adapter(tiny_gemma, tmp_path / "fr", ["fr"], seed=1)
    exact = Engine(str(tiny_gemma), [f"fr={adapter}"], dtype="float32")
    engine = Engine(str(tiny_gemma), [f"fr={adapter}"], dtype="float32", quantization="int8")
    kinds = {name: type(module) for name, module in engine.model.named_modules()}
    assert any(kind is lowbit.Int8Linear for kind in kinds.values())
    lora = [kind for name, kind in kinds.items() if ".lora_A." in name or ".lora_B." in name]
    assert lora and all(kind is torch.nn.Linear for kind in lora)
    assert all(kind is not lowbit.Int8Linear for name, kind in kinds.items() if "down_proj" in name)
    assert type(engine.model.get_output_embeddings()) is lowbit.Int8Linear
    assert engine.mode["quantization"] == "int8" and exact.mode["quantization"] == "none"
    requests = [Request(engine.catalog.render(name, prompt), SamplingParams(max_new_tokens=8), name)
                for prompt in PROMPTS for name in (BASE, "fr")]
    with torch.no_grad():
        ids = torch.tensor([requests[0].prompt_ids])
        a, b = engine.model(ids).logits, exact.model(ids).logits
    assert float((a - b).abs().max()) < 0.05 * float(b.max() - b.min())
    answers = engine.generate(requests)
    assert all(reason in ("stop", "length") for _, reason, _ in answers)
    assert answers == [engine.generate([request])[0] for request in requests]  # integer products: batch-invariant


def test_auto_never_quantizes(tiny_llama):
    engine = Engine(str(tiny_llama), dtype="float32")
    assert not any(isinstance(module, lowbit.Int8Linear) for module in engine.model.modules())


def test_serve_reports_the_decoding_mode_with_the_key(tiny_llama):
    import httpx

    from bactrian.infer.server import engine_app

    from support import LiveServer

    with LiveServer(engine_app(Engine(str(tiny_llama), dtype="float32", quantization="int8"), api_key="k")) as url:
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        health = httpx.get(f"{url}/health", headers={"Authorization": "Bearer k"}).json()
    assert health["decoding"]["quantization"] == "int8" and health["decoding"]["dtype"] == "float32"


@pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines, reason="fbgemm (x86) is absent")
def test_an_fp16_layer_rounds_only_the_weights():
    torch.manual_seed(0)
    linear = torch.nn.Linear(640, 2048)
    x = torch.randn(5, 3, 640)
    rounded = torch.nn.functional.linear(x, linear.weight.half().float(), linear.bias.half().float())
    out = lowbit.Fp16Linear(linear)(x)
    assert out.shape == rounded.shape and out.dtype == torch.float32
    assert float((out - rounded).abs().max()) < 1e-4 * float(rounded.abs().max())  # fp32 sums of fp16 weights
    assert lowbit.Fp16Linear(linear)(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines, reason="fbgemm (x86) is absent")
def test_fp16_weights_for_every_base_layer_and_the_head_batch_invariant(tiny_gemma, tmp_path):
    from support import make_adapter

    adapter = make_adapter(tiny_gemma, tmp_path / "fr", ["fr"], seed=1)
    exact = Engine(str(tiny_gemma), [f"fr={adapter}"], dtype="float32")
    engine = Engine(str(tiny_gemma), [f"fr={adapter}"], dtype="float32", quantization="fp16")
    kinds = {name: type(module) for name, module in engine.model.named_modules()}
    base_layers = [kind for name, kind in kinds.items() if name.endswith(("down_proj", "q_proj.base_layer"))]
    assert base_layers and all(kind is lowbit.Fp16Linear for kind in base_layers)
    assert [kind for name, kind in kinds.items() if ".lora_A." in name] and all(
        kind is torch.nn.Linear for name, kind in kinds.items() if ".lora_A." in name or ".lora_B." in name)
    assert type(engine.model.get_output_embeddings()) is lowbit.Fp16Linear
    assert engine.mode["quantization"] == "fp16"
    requests = [Request(engine.catalog.render(name, prompt), SamplingParams(max_new_tokens=8), name)
                for prompt in PROMPTS for name in (BASE, "fr")]
    with torch.no_grad():
        ids = torch.tensor([requests[0].prompt_ids])
        a, b = engine.model(ids).logits, exact.model(ids).logits
    assert float((a - b).abs().max()) < 1e-3 * float(b.max() - b.min())
    answers = engine.generate(requests)
    assert answers == [engine.generate([request])[0] for request in requests]  # fbgemm's rows are independent
