"""Options a verb would ignore or override are refused, naming them (never silently dropped)."""

import pytest

from bactrian.errors import ConfigError

from support import write_jsonl


@pytest.mark.parametrize("engine, extra, named", [
    ("hf", {"dry_run": True}, "--dry_run"), ("hf", {"batch_file": "b.jsonl"}, "--batch_file"),
    ("hf", {"base_url": "http://x/v1", "requests_per_minute": 5}, "--base_url, --requests_per_minute"),
    ("hf", {"price_per_1m_tokens": 1.0}, "--price_per_1m_tokens"),
    ("openai", {"decode_batch_size": 4}, "--decode_batch_size")])
def test_data_generate_refuses_what_its_engine_ignores(tmp_path, engine, extra, named):
    from bactrian.data.generate import DataGenerateConfig, generate

    source = write_jsonl(tmp_path / "fr.jsonl", [{"instruction": "Bonjour ?"}])
    with pytest.raises(ConfigError, match=f"--engine {engine} does not use {named}"):
        generate(DataGenerateConfig(input=str(source), engine=engine, model="m", output_dir=str(tmp_path / "o"),
                                    **extra))


@pytest.mark.parametrize("engine, extra, named", [
    ("google", {"model": "gpt"}, "--model"), ("deepl", {"batch_file": "b"}, "--batch_file"),
    ("llm", {"decode_batch_size": 4}, "--decode_batch_size"), ("hf", {"concurrency": 2}, "--concurrency")])
def test_data_translate_refuses_what_its_engine_ignores(tmp_path, engine, extra, named):
    from bactrian.data.translate import TranslateConfig, translate

    source = write_jsonl(tmp_path / "en.jsonl", [{"instruction": "Hello?"}])
    with pytest.raises(ConfigError, match=f"--engine {engine} does not use {named}"):
        translate(TranslateConfig(input=str(source), lang=["fr"], engine=engine, output_dir=str(tmp_path / "o"),
                                  **extra))


def test_a_recipe_cannot_ask_a_build_to_keep_failing_rows(tmp_path):
    from bactrian.data.build import build

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("input: x.jsonl\noutput_dir: out\ngenerate:\n  model: m\nfilter:\n  drop: false\n")
    with pytest.raises(ConfigError, match="filter.drop: a build always drops"):
        build(str(recipe))


def test_eval_refuses_a_prompt_template_it_would_not_use(tiny_llama, tmp_path):
    from bactrian.eval.config import EvalConfig
    from bactrian.eval.run import evaluate

    with pytest.raises(ConfigError, match="--prompt_template_name: multiple-choice tasks score each task's own"):
        evaluate(EvalConfig(base_model=str(tiny_llama), prompt_template_name="alpaca", tasks=["xcopa"],
                            output_dir=str(tmp_path)))


def test_generate_refuses_sampling_settings_with_beams_and_records_only_what_decided(tiny_llama, tmp_path):
    import json

    from bactrian.infer.config import GenerateConfig
    from bactrian.infer.generate import generate

    source = write_jsonl(tmp_path / "q.jsonl", [{"id": "q", "instruction": "Hi"}])
    settings = dict(base_model=str(tiny_llama), input_file=str(source), max_new_tokens=3)
    with pytest.raises(ConfigError, match="--num_beams above 1 .* ignores --temperature"):
        generate(GenerateConfig(**settings, output_file=str(tmp_path / "a.jsonl"), num_beams=2, temperature=0.7))
    generate(GenerateConfig(**settings, output_file=str(tmp_path / "b.jsonl"), num_beams=2))
    generate(GenerateConfig(**settings, output_file=str(tmp_path / "c.jsonl"), temperature=0.7, seed=5))
    beams = json.loads((tmp_path / "b.jsonl").read_text())["generation"]
    sampled = json.loads((tmp_path / "c.jsonl").read_text())["generation"]
    assert beams == {"num_beams": 2, "max_new_tokens": 3, "stop": []}
    assert sampled == {"temperature": 0.7, "top_p": 1.0, "top_k": 0, "max_new_tokens": 3, "stop": [], "seed": 5}


def test_per_language_refuses_one_checkpoint_for_every_language(tmp_path):
    from bactrian.train.config import FinetuneConfig
    from bactrian.train.finetune import finetune

    with pytest.raises(ConfigError, match="--per_language resumes each language from its own checkpoints"):
        finetune(FinetuneConfig(data_path=[str(tmp_path)], per_language=True,
                                resume_from_checkpoint=str(tmp_path / "checkpoint-5")))


def test_seed_names_work_old_names_warn_and_both_at_once_is_an_error(caplog):
    from bactrian.cli import build_config, build_parser
    from bactrian.infer.config import GenerateConfig
    from bactrian.train.config import FinetuneConfig

    def parse(config_cls, verb, *argv):
        return build_config(config_cls, build_parser().parse_args([verb, *argv]))

    assert parse(FinetuneConfig, "finetune", "--batch_size", "64").global_batch_size == 64  # the Bactrian-X flag
    assert not caplog.records
    assert parse(GenerateConfig, "generate", "--batch_size", "3").decode_batch_size == 3
    assert "--batch_size is deprecated: it is now --decode_batch_size" in caplog.text
    with pytest.raises(ConfigError, match="given twice"):
        parse(GenerateConfig, "generate", "--batch_size", "3", "--decode_batch_size", "4")
