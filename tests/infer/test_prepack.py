"""oneDNN-prepacked linear layers (weight prepacking, not sequence packing): the same products as F.linear, every
layer of a PEFT model but LoRA's own, the same greedy answers as the unpacked engine, and a bounded number of
compiled shapes."""

import psutil
import pytest
import torch

from bactrian.infer import prepack
from bactrian.infer.engine import Engine
from bactrian.infer.prepack import ROW_BUCKETS, PrepackedLinear, prepack_linear_layers, prepacking_applies
from bactrian.infer.requests import Request, SamplingParams
from bactrian.infer.routing import BASE

from support import make_adapter

pytestmark = pytest.mark.skipif(not prepack.x86_with_onednn(), reason="needs an x86 CPU with oneDNN")


@pytest.fixture(scope="module")
def gemma_adapters(tiny_gemma, tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma-adapters")
    return {lang: make_adapter(tiny_gemma, root / lang, [lang], seed, targets=("q_proj", "v_proj", "down_proj"))
            for seed, lang in enumerate(("fr", "de"), start=1)}


@pytest.mark.parametrize("bias", [True, False])
def test_prepacked_linear_computes_what_the_linear_does(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80, bias=bias)
    packed = PrepackedLinear(linear)
    assert packed.weight is linear.weight and packed.bias is linear.bias  # shared, not copied
    for shape in [(1, 48), (3, 48), (16, 48), (17, 48), (64, 48), (65, 48), (2, 7, 48), (4, 50, 48)]:
        x = torch.randn(shape)
        assert torch.allclose(packed(x), linear(x), atol=1e-5), shape


def test_prepacking_replaces_base_layers_and_the_head_not_lora(tiny_gemma, gemma_adapters):
    engine = Engine(str(tiny_gemma), [f"de={gemma_adapters['de']}"], dtype="float32")
    kinds = {name: type(module) for name, module in engine.model.named_modules()}
    packed = [name for name, kind in kinds.items() if kind is PrepackedLinear]
    assert packed and all(".lora_" not in name for name in packed)
    assert not [name for name, kind in kinds.items() if kind is torch.nn.Linear and ".lora_" not in name]
    head, embedding = engine.model.get_output_embeddings(), engine.model.get_input_embeddings()
    assert type(head) is PrepackedLinear and head.weight is embedding.weight  # still tied


def test_prepacked_engine_answers_as_the_unpacked_one(tiny_gemma, gemma_adapters):
    adapters = [f"{lang}={path}" for lang, path in gemma_adapters.items()]
    engines = [Engine(str(tiny_gemma), adapters, dtype="float32", prepacked_weights=packed) for packed in (True, False)]
    prompts = ["Name a primary colour.", "Nenne das Gegenteil von heiß und erkläre warum.", "Add", "Écris"]
    names = [BASE, *gemma_adapters]

    def answers(engine):
        requests = [Request(engine.catalog.render(name, prompt), SamplingParams(max_new_tokens=24), name)
                    for prompt in prompts for name in names]
        return engine.generate(requests)

    assert answers(engines[0]) == answers(engines[1])


def test_row_counts_share_a_few_compiled_shapes(monkeypatch):
    """oneDNN compiles a primitive per input shape: every row count up to the last bucket maps to a bucket."""
    shapes = []
    real = prepack.prepacked_product

    def spy(x, *args):
        shapes.append(tuple(x.shape))
        return real(x, *args)

    monkeypatch.setattr(prepack, "prepacked_product", spy)
    layer = PrepackedLinear(torch.nn.Linear(32, 32))
    for rows in range(1, 100):
        layer(torch.randn(rows, 32))
    assert {rows for rows, _ in shapes} == set(ROW_BUCKETS)


def test_memory_stays_flat_across_row_counts():
    layer = PrepackedLinear(torch.nn.Linear(640, 2048))
    for rows in ROW_BUCKETS:
        layer(torch.randn(rows, 640))
    before = psutil.Process().memory_info().rss
    with torch.no_grad():
        for rows in range(1, 65):
            layer(torch.randn(rows, 640))
    assert psutil.Process().memory_info().rss - before < 16 * 2**20


def test_bf16_models_are_left_alone(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16)
    assert not prepacking_applies(model)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert prepacking_applies(model) and prepack_linear_layers(model) == 2 * 7 + 1  # 2 layers x 7 projections + head
