"""`auto` routing: each rule of `bactrian.infer.routing`, with per-language and multilingual adapter sets."""

import json

import pytest

from bactrian.adapters import AdapterCard as AdapterCard
from bactrian.infer.engine import Engine
from bactrian.infer.routing import choose, tell_language
from bactrian.manifest import write_manifest

from support import make_adapter

pytestmark = pytest.mark.dtype_sensitive  # runs under both choices of `auto` in .ci/run

FRENCH = "Bonjour, pouvez-vous me dire quelle heure il est maintenant ?"
GERMAN = "Guten Morgen, kannst du mir bitte sagen, wie spät es ist?"
SWAHILI = "Nipe ushauri wa kulala vizuri."  # the sentence of issue 18
PER_LANGUAGE = [AdapterCard("fr", ["fr"], {"fr": 1.9}), AdapterCard("de", ["de"], {"de": 2.0})]
MULTI = AdapterCard("tuned", ["ar", "de", "en", "es", "fr", "id", "it", "ja", "nl", "pt", "ru", "zh"],
                    {"de": 1.5, "fr": 1.4})
SMALL_MULTI = AdapterCard("europe", ["de", "fr", "en"], {"de": 1.2, "fr": 1.3})


def test_the_adapter_for_the_language_wins_over_multilingual_ones():
    route = choose([MULTI, SMALL_MULTI, *PER_LANGUAGE], [FRENCH])
    assert (route.adapter, route.lang, route.language_from, route.rule) == ("fr", "fr", "detected", "covers-language")
    assert route.confidence > 0.5
    assert "most specific of 3 adapters covering fr" in route.reason


def test_among_multilingual_adapters_the_narrower_one_wins_even_with_a_worse_loss():
    route = choose([MULTI, AdapterCard("europe", ["de", "fr", "en"], {"de": 9.0})], [GERMAN])
    assert route.adapter == "europe"


def test_equally_specific_adapters_are_decided_by_eval_loss_then_name():
    worse, better = AdapterCard("a-worse", ["de"], {"de": 2.5}), AdapterCard("z-better", ["de"], {"de": 1.1})
    route = choose([worse, better], [GERMAN])
    assert route.adapter == "z-better" and "lowest eval loss on de (1.1000) of 2" in route.reason
    unmeasured = AdapterCard("b", ["de"])
    assert choose([unmeasured, worse], [GERMAN]).adapter == "a-worse"  # unmeasured counts as worst
    route = choose([AdapterCard("y", ["de"]), AdapterCard("x", ["de"])], [GERMAN])
    assert route.adapter == "x" and "first by name" in route.reason
    assert choose([AdapterCard("x", ["de"]), AdapterCard("y", ["de"])], [GERMAN]).adapter == "x"  # order-free


def test_an_uncovered_language_goes_to_the_broadest_multilingual_adapter_or_the_base():
    route = choose([SMALL_MULTI, MULTI, *PER_LANGUAGE], [SWAHILI])
    assert (route.adapter, route.lang, route.rule) == ("tuned", "sw", "fallback-multilingual")
    assert route.reason.startswith("no adapter covers sw; tuned is the multilingual adapter covering the most")
    assert choose([SMALL_MULTI, MULTI], [SWAHILI], fallback="base").adapter == "base"
    only_per_language = choose(PER_LANGUAGE, [SWAHILI])
    assert (only_per_language.adapter, only_per_language.rule) == ("base", "fallback-base")
    tie = choose([AdapterCard("b", ["de", "fr"], {"de": 2.0}), AdapterCard("a", ["en", "it"], {"en": 3.0})],
                 [SWAHILI])
    assert tie.adapter == "b"  # same breadth: lower mean eval loss


def test_short_texts_keep_the_conversations_language():
    route = choose([MULTI, *PER_LANGUAGE], [GERMAN, "ok"])
    assert (route.adapter, route.lang, route.language_from) == ("de", "de", "conversation")
    assert choose([MULTI, *PER_LANGUAGE], [GERMAN, "Merci !"]).lang == "de"
    alone = choose([MULTI, *PER_LANGUAGE], ["ok"])
    assert (alone.adapter, alone.lang, alone.language_from, alone.rule) == ("tuned", None, "undetected",
                                                                             "fallback-multilingual")
    assert "the language could not be told" in alone.reason


def test_a_short_text_in_a_script_of_one_language_is_told_by_its_script():
    assert tell_language("こんにちは") == ("ja", 1.0)
    assert tell_language("안녕") == ("ko", 1.0)
    assert tell_language("ok") == (None, 0.0)
    assert tell_language("你好")[0] is None  # Han alone: Chinese or Japanese


def test_engine_reads_languages_and_eval_losses_from_each_manifest(tiny_llama, tmp_path):
    def adapter(name, langs, losses, seed):
        folder = make_adapter(tiny_llama, tmp_path / name, langs, seed)
        write_manifest(folder, "adapter", {"base_model": str(tiny_llama)}, languages=langs,
                       metrics={"eval_loss": 2.0, "eval_loss_per_lang": losses})
        return f"{name}={folder}"

    engine = Engine(str(tiny_llama), [adapter("wide", ["de", "fr", "en"], {"de": 3.0, "fr": 1.0, "en": 2.0}, 1),
                                      adapter("narrow", ["de", "fr", "en"], {"de": 1.0, "fr": 3.0, "en": 2.0}, 2)])
    assert engine.catalog.adapters["wide"].eval_loss == {"de": 3.0, "fr": 1.0, "en": 2.0}
    assert engine.catalog.resolve_adapter("auto", GERMAN).adapter == "narrow"
    assert engine.catalog.resolve_adapter("auto", FRENCH).adapter == "wide"
    assert engine.catalog.resolve_adapter("auto", [FRENCH, "ok"]).adapter == "wide"
    assert engine.catalog.resolve_adapter("wide", GERMAN).rule == "requested"
    base = Engine(str(tiny_llama), [adapter("wide2", ["de", "fr"], {}, 3)], auto_fallback="base")
    assert base.catalog.resolve_adapter("auto", SWAHILI).adapter == "base"


def test_an_adapter_without_a_language_list_covers_the_language_it_is_named_after(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "de"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                   LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(folder)
    engine = Engine(str(tiny_llama), [str(folder)])
    assert engine.catalog.adapters["de"].languages == ["de"]
    assert engine.catalog.resolve_adapter("auto", GERMAN).adapter == "de"


def test_a_bad_fallback_is_refused(tiny_llama):
    from bactrian.errors import ConfigError

    with pytest.raises(ConfigError, match="--auto_fallback nobody"):
        Engine(str(tiny_llama), [], auto_fallback="nobody")


def test_generate_rows_say_why(tiny_llama, tiny_adapters, tmp_path):
    from bactrian.infer.config import GenerateConfig
    from bactrian.infer.generate import generate

    from support import write_jsonl

    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "q0", "instruction": GERMAN},
                                                   {"id": "q1", "instruction": SWAHILI}])
    output = tmp_path / "out.jsonl"
    generate(GenerateConfig(base_model=str(tiny_llama), lora_weights=[str(tiny_adapters["de"])],
                                 input_file=str(questions), output_file=str(output), max_new_tokens=3))
    rows = {row["id"]: row for row in map(json.loads, output.read_text().splitlines())}
    assert rows["q0"]["adapter"] == "de" and rows["q0"]["route"]["rule"] == "covers-language"
    assert rows["q1"]["adapter"] == "base" and rows["q1"]["route"]["reason"].startswith("no adapter covers sw")


def test_a_huge_message_is_told_by_its_start():
    """A megabyte of text held the server's event loop for a second and was told as no language at all."""
    from bactrian.infer.routing import tell_language

    lang, _ = tell_language("Bonjour tout le monde, comment allez-vous aujourd'hui ? " * 18000)
    assert lang == "fr"
