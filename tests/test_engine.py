"""The generation engine: batching invariance, adapters per request, stops, streaming, memory, routing."""


import pytest
import torch

from bactrian.errors import ConfigError
from bactrian.infer.engine import BASE, Engine, Request, SamplingParams, parse_adapter_specs

from conftest import make_adapter

PROMPTS = ["Name a primary colour.", "Nenne das Gegenteil von heiß und erkläre warum.", "Add", "Écris"]


@pytest.fixture(scope="module")
def engine(tiny_llama, tiny_adapters):
    return Engine(str(tiny_llama), [f"fr={tiny_adapters['fr']}", str(tiny_adapters["de"])])


def greedy(engine, prompt, adapter, **params):
    return Request(engine.render(adapter, prompt), SamplingParams(max_new_tokens=params.pop("max_new_tokens", 12),
                                                                  **params), adapter)


def test_adapters_are_named_and_share_the_base(engine):
    assert engine.model_names == ["base", "fr", "de", "auto"]
    assert engine.adapters["de"].languages == ["de"]


def test_mixed_batch_gives_each_request_what_it_gets_alone(engine):
    requests = [greedy(engine, prompt, adapter) for prompt in PROMPTS for adapter in (BASE, "fr", "de")]
    alone = [engine.generate([request])[0] for request in requests]
    together = engine.generate(requests)
    assert together == alone
    texts = {adapter: engine.generate([greedy(engine, PROMPTS[0], adapter)])[0][0] for adapter in (BASE, "fr", "de")}
    assert len(set(texts.values())) == 3  # the adapter really changes the answer


def test_seeded_sampling_does_not_depend_on_the_batch(engine):
    sampled = [greedy(engine, prompt, "fr", temperature=0.9, top_p=0.9, top_k=50, seed=7) for prompt in PROMPTS]
    alone = [engine.generate([request])[0] for request in sampled]
    assert engine.generate(sampled) == alone
    other_seed = greedy(engine, PROMPTS[0], "fr", temperature=0.9, top_p=0.9, top_k=50, seed=8, max_new_tokens=30)
    same_seed = greedy(engine, PROMPTS[0], "fr", temperature=0.9, top_p=0.9, top_k=50, seed=7, max_new_tokens=30)
    assert engine.generate([other_seed]) != engine.generate([same_seed])


def test_length_and_stop_strings(engine):
    text, reason, tokens = engine.generate([greedy(engine, PROMPTS[1], BASE, max_new_tokens=9)])[0]
    assert reason == "length" and tokens == 9
    stop = text[3:6]
    cut, reason, _ = engine.generate([greedy(engine, PROMPTS[1], BASE, max_new_tokens=9, stop=[stop])])[0]
    assert reason == "stop" and cut == text[: text.find(stop)]


def test_streaming_deltas_add_up_to_the_answer(engine):
    request = greedy(engine, PROMPTS[0], "de", max_new_tokens=10)
    deltas = list(engine.stream([request]))
    assert len(deltas) > 1 and deltas[-1].finish_reason
    whole = engine.generate([greedy(engine, PROMPTS[0], "de", max_new_tokens=10)])[0][0]
    assert "".join(d.text for d in deltas) == whole


def test_beam_search(engine):
    text, reason, tokens = engine.generate([greedy(engine, PROMPTS[0], "fr", num_beams=3, max_new_tokens=6)])[0]
    assert reason in ("stop", "length") and 0 < tokens <= 6 and isinstance(text, str)


def test_eos_ends_a_request(tiny_llama):
    engine = Engine(str(tiny_llama))
    prompt = engine.render(BASE, PROMPTS[0])
    with torch.no_grad():
        first = int(engine.model(torch.tensor([prompt])).logits[0, -1].argmax())
    engine.tokenizer.eos_token_id = first  # make the model's first greedy choice the end of sequence
    text, reason, tokens = engine.generate([Request(prompt, SamplingParams(max_new_tokens=5))])[0]
    assert (text, reason, tokens) == ("", "stop", 1)


def test_bad_adapter_specs(tiny_adapters, tmp_path):
    assert list(parse_adapter_specs([str(tiny_adapters["fr"])])) == ["fr"]
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        parse_adapter_specs([f"x={tmp_path}"])
    with pytest.raises(ConfigError, match="reserved"):
        parse_adapter_specs([f"auto={tiny_adapters['fr']}"])


def test_52_adapters_add_only_their_own_size(tiny_gemma, tmp_path):
    base = Engine(str(tiny_gemma))
    base_bytes = parameter_bytes(base.model)
    specs = []
    for seed in range(52):
        folder = make_adapter(tiny_gemma, tmp_path / f"a{seed}", ["en"], seed, r=16,
                              targets=("q_proj", "k_proj", "v_proj", "o_proj"))
        specs.append(f"a{seed}={folder}")
    many = Engine(str(tiny_gemma), specs)
    adapter_bytes = sum((tmp_path / f"a{seed}" / "adapter_model.safetensors").stat().st_size for seed in range(52))
    added = parameter_bytes(many.model) - base_bytes
    assert 0 < added <= adapter_bytes


def parameter_bytes(model) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.parametrize("text, adapter, lang", [
    ("Bonjour, pouvez-vous me dire quelle heure il est maintenant ?", "fr", "fr"),
    ("Guten Morgen, kannst du mir bitte sagen, wie spät es ist?", "de", "de"),
    ("Good morning, could you please tell me what time it is?", "base", "en"),
])
def test_auto_routes_by_detected_language(engine, text, adapter, lang):
    assert engine.resolve_adapter("auto", text) == (adapter, lang)


def test_auto_falls_back_to_a_multilingual_adapter(tiny_llama, tiny_adapters, tmp_path):
    multi = make_adapter(tiny_llama, tmp_path / "multi", ["en", "fr", "de", "es"], seed=9)
    engine = Engine(str(tiny_llama), [f"fr={tiny_adapters['fr']}", f"multi={multi}"])
    assert engine.resolve_adapter("auto", "Good morning, could you please tell me the time?") == ("multi", "en")
    assert engine.resolve_adapter("auto", "Bonjour, pouvez-vous me dire quelle heure il est ?")[0] == "fr"
