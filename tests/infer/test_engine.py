"""The engine: adapters (named, shared base, their memory), routing by `auto`, beam search, bf16 weights, the
scoring lock and the name the cache is passed under. The decoding batch is tested in test_decoding.py."""


import pytest
import torch

from bactrian.adapters import parse_adapter_specs
from bactrian.errors import ConfigError
from bactrian.infer.engine import Engine
from bactrian.infer.routing import BASE

from support import PROMPTS, greedy, make_adapter, parameter_bytes


def test_adapters_are_named_and_share_the_base(engine):
    assert engine.catalog.model_names == ["base", "fr", "de", "auto"]
    assert engine.catalog.adapters["de"].languages == ["de"]


def test_beam_search(engine, tiny_llama, tiny_adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    text, reason, tokens = engine.generate([greedy(engine, PROMPTS[0], "fr", num_beams=3, max_new_tokens=6)])[0]
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tiny_adapters["fr"]).eval()
    ids = torch.tensor([engine.catalog.render("fr", PROMPTS[0])])
    with torch.no_grad():
        beams = tuned.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=3, do_sample=False,
                               max_new_tokens=6, pad_token_id=engine.tokenizer.pad_token_id)
    new = beams[0, ids.shape[1]:].tolist()
    assert text == engine.tokenizer.decode(new, skip_special_tokens=True) and tokens == len(new)
    assert reason == ("stop" if new[-1] == engine.tokenizer.eos_token_id else "length")


def test_bad_adapter_specs(tiny_adapters, tmp_path):
    assert list(parse_adapter_specs([str(tiny_adapters["fr"])])) == ["fr"]
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        parse_adapter_specs([f"x={tmp_path}"])
    with pytest.raises(ConfigError, match="reserved"):
        parse_adapter_specs([f"auto={tiny_adapters['fr']}"])


def test_52_adapters_add_only_their_own_size(tiny_gemma, tmp_path):
    base = Engine(str(tiny_gemma), dtype="float32")
    base_bytes = parameter_bytes(base.model)
    specs = []
    for seed in range(52):
        folder = make_adapter(tiny_gemma, tmp_path / f"a{seed}", ["en"], seed, r=16,
                              targets=("q_proj", "k_proj", "v_proj", "o_proj"))
        specs.append(f"a{seed}={folder}")
    many = Engine(str(tiny_gemma), specs, dtype="float32")
    adapter_bytes = sum((tmp_path / f"a{seed}" / "adapter_model.safetensors").stat().st_size for seed in range(52))
    added = parameter_bytes(many.model) - base_bytes
    assert 0 < added <= adapter_bytes


@pytest.mark.parametrize("text, adapter, lang", [
    ("Bonjour, pouvez-vous me dire quelle heure il est maintenant ?", "fr", "fr"),
    ("Guten Morgen, kannst du mir bitte sagen, wie spät es ist?", "de", "de"),
    ("Good morning, could you please tell me what time it is?", "base", "en"),
])
def test_auto_routes_by_detected_language(engine, text, adapter, lang):
    route = engine.catalog.resolve_adapter("auto", text)
    assert (route.adapter, route.lang) == (adapter, lang)


def test_auto_falls_back_to_a_multilingual_adapter(tiny_llama, tiny_adapters, tmp_path):
    multi = make_adapter(tiny_llama, tmp_path / "multi", ["en", "fr", "de", "es"], seed=9)
    engine = Engine(str(tiny_llama), [f"fr={tiny_adapters['fr']}", f"multi={multi}"], dtype="float32")
    route = engine.catalog.resolve_adapter("auto", "Good morning, could you please tell me the time?")
    assert (route.adapter, route.lang) == ("multi", "en")
    assert engine.catalog.resolve_adapter("auto", "Bonjour, pouvez-vous me dire quelle heure il est ?").adapter == "fr"


def test_bf16_weights_stay_close_to_fp32(tiny_llama):
    fp32 = Engine(str(tiny_llama), [], dtype="float32")
    bf16 = Engine(str(tiny_llama), [], dtype="bfloat16")
    assert bf16.model.dtype == torch.bfloat16 and fp32.model.dtype == torch.float32
    ids = torch.tensor([fp32.catalog.render("base", PROMPTS[1])])
    with torch.no_grad():
        exact = fp32.model(ids).logits[0, -1]
        half = bf16.model(ids).logits[0, -1].float()
    assert float((half - exact).abs().max()) < 0.05 * float(exact.max() - exact.min())  # stated tolerance: 5% of range
    with pytest.raises(Exception, match="--dtype int3"):
        Engine(str(tiny_llama), [], dtype="int3")


def test_selecting_an_adapter_for_scoring_holds_the_lock_and_restores_the_previous_one(engine):
    engine.model.set_adapter("de")
    ids = torch.tensor([engine.catalog.render("base", PROMPTS[0])])
    with torch.no_grad():
        for name in ("base", "fr"):
            with engine.using(name) as model:
                assert engine.lock.locked()
                scored = model(ids).logits[0, -1]
            alone = engine.forward(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None], None, [name])[0, -1]
            assert torch.allclose(scored, alone, atol=1e-5), name
            assert engine.model.active_adapter == "de" and not engine.lock.locked()


def test_the_cache_is_passed_under_the_name_the_installed_transformers_takes(engine):
    import inspect

    from bactrian.infer.engine import cache_keyword

    base = engine.model.get_base_model()
    assert cache_keyword(base) == engine.cache_keyword
    assert engine.cache_keyword in inspect.signature(base.forward).parameters  # `cache` from 5.24, else past_key_values


def test_a_forward_that_leaves_the_cache_empty_fails_with_the_transformers_version(engine, monkeypatch):
    """What transformers 5.17/5.18 did with `cache=`: swallowed by **kwargs, the cache stays empty and every step
    would see only its newest token. The engine says so instead of answering garbage."""
    import transformers

    monkeypatch.setattr(engine, "cache_keyword", "kv_cache_under_a_name_the_model_ignores")
    (delta,) = list(engine.stream([greedy(engine, PROMPTS[0], BASE)]))
    assert delta.finish_reason == "error"
    assert f"transformers {transformers.__version__} did not fill it" in delta.error


def test_the_head_gets_plain_strides_in_a_prefill(engine):
    """A prefill's last positions are a strided view; torch 2.13 multiplies such a view by a copy of the head's
    weight expanded to every row (7 s for 8 rows of Gemma 3 270M in bf16): the engine hands the head a plain one."""
    from support import PROMPTS, greedy

    strides = []
    hook = engine.model.get_output_embeddings().register_forward_pre_hook(
        lambda _, args: strides.append((tuple(args[0].shape), args[0].stride())))
    try:
        engine.generate([greedy(engine, prompt, "base", max_new_tokens=2) for prompt in PROMPTS])
    finally:
        hook.remove()
    assert strides and all(stride == (shape[1] * shape[2], shape[2], 1) for shape, stride in strides)
