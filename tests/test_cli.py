import pytest

from bactrian.cli import build_config, build_parser, main
from bactrian.errors import ConfigError
from bactrian.train.config import FinetuneConfig


def parse(*argv, verb="finetune"):
    from bactrian.data.prefs import PrefsConfig

    config_cls = PrefsConfig if verb == "data-prefs" else FinetuneConfig
    return build_config(config_cls, build_parser().parse_args([verb, *argv]))


def test_original_flag_names_and_styles():
    config = parse("--base_model", "m", "--data_path", "a.jsonl", "--data_path", "b.jsonl", "--lang", "fr,de",
                   "--lora_target_modules", "q_proj,k_proj,v_proj,o_proj", "--train_on_inputs", "False",
                   "--group_by_length", "--batch_size", "64", "--learning_rate", "1e-4")
    assert config.data_path == ["a.jsonl", "b.jsonl"]
    assert config.lang == ["fr", "de"]
    assert config.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert config.train_on_inputs is False and config.group_by_length is True
    assert config.global_batch_size == 64 and config.learning_rate == 1e-4


def test_yaml_config_with_flags_overriding(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base_model: some/model\nlora_r: 64\nlora_target_modules: [q_proj, v_proj]\n"
                      "data_path: x.jsonl\ncutoff_len: 768\n")
    config = parse("--config", str(recipe), "--lora_r", "16")
    assert config.lora_r == 16 and config.cutoff_len == 768 and config.base_model == "some/model"
    assert config.lora_target_modules == ["q_proj", "v_proj"] and config.data_path == ["x.jsonl"]


def test_bad_config_files_are_clear_errors(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("lora_rank: 8\n")
    with pytest.raises(ConfigError, match="unknown.yaml: unknown option.*lora_rank"):
        parse("--config", str(unknown))
    broken = tmp_path / "broken.yaml"
    broken.write_text("lora_r: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml: line"):
        parse("--config", str(broken))
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("lora_r: !!python/object/apply:os.system [echo]\n")
    with pytest.raises(ConfigError, match="tagged.yaml: line 1: not valid YAML"):
        parse("--config", str(tagged))
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("lora_r: many\n")
    with pytest.raises(ConfigError, match="wrong.yaml: lora_r: invalid literal"):
        parse("--config", str(wrong_type))


@pytest.mark.parametrize("line, message", [
    ("max_steps: 3.9", "max_steps: expected an integer, got 3.9"),
    ("lora_r: true", "lora_r: expected an integer, got True"),
    ("output_dir: [a, b]", "output_dir: expected text, got \\['a', 'b'\\]"),
    ("lora_target_modules: {q_proj: 1}", "lora_target_modules: expected a list of values or comma-separated text"),
    ("lora_target_modules: [[q_proj]]", "lora_target_modules: expected a list of values"),
    ("learning_rate: .inf", "learning_rate: expected a finite number, got inf"),
    ("learning_rate: .nan", "learning_rate: expected a finite number, got nan"),
    ("learning_rate: yes", "learning_rate: expected a finite number, got True"),
    ("group_by_length: 1", "group_by_length: expected true or false, got 1"),
])
def test_a_yaml_value_is_taken_only_in_its_options_type(tmp_path, line, message):
    """They were coerced into other settings: 3.9 steps ran 3, `lora_r: true` trained rank 1, a list became a
    folder named "['a', 'b']", `.inf` was a learning rate."""
    recipe = tmp_path / "typed.yaml"
    recipe.write_text(f"data_path: x.jsonl\n{line}\n")
    with pytest.raises(ConfigError, match=f"typed.yaml: {message}"):
        parse("--config", str(recipe))


@pytest.mark.parametrize("flag, value", [("--learning_rate", "inf"), ("--learning_rate", "nan"),
                                         ("--lora_dropout", "infinity"), ("--max_grad_norm", "NaN")])
def test_non_finite_float_flags_are_refused(flag, value):
    """`--learning_rate inf` exited 0 with every LoRA tensor NaN."""
    with pytest.raises(ConfigError, match=f"{flag}: expected a finite number"):
        parse("--data_path", "x.jsonl", flag, value)


@pytest.mark.parametrize("verb", ["finetune", "demo", "chat", "generate", "serve", "export", "eval"])
def test_help_describes_every_option(capsys, verb):
    from bactrian.cli import COMMANDS, load

    config_cls = load(next(command.config for command in COMMANDS if command.name == verb))
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = capsys.readouterr().out
    for name in config_cls.__dataclass_fields__:
        assert f"--{name}" in text


def test_errors_exit_2_with_a_message(capsys, tmp_path):
    assert main(["finetune", "--data_path", str(tmp_path / "missing.jsonl"), "--base_model",
                 str(tmp_path)]) == 2
    assert "bactrian finetune: error:" in capsys.readouterr().err


@pytest.mark.parametrize("recipe, verb", [("bactrian-x-multilingual-7b.yaml", "finetune"),
                                          ("bactrian-x-monolingual-7b.yaml", "finetune"), ("cpu-demo.yaml", "finetune"),
                                          ("prefs-language-fidelity.yaml", "data-prefs"),
                                          ("dpo-language-fidelity.yaml", "finetune")])
def test_shipped_recipes_parse(recipe, verb):
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "recipes" / recipe
    from bactrian.options import other_names

    config = parse("--config", str(path), verb=verb)
    names = other_names(type(config))
    for key, value in yaml.safe_load(path.read_text()).items():  # every key lands, with its value and type
        expected = [value] if key == "data_path" and isinstance(value, str) else \
            value.split(",") if key == "lang" else value
        assert key not in names or not names[key][1], f"{key} is deprecated"  # seed names are fine
        assert getattr(config, names.get(key, (key,))[0]) == expected, key
