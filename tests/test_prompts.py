import json

import pytest

from bactrian.errors import ConfigError
from bactrian.prompts import load_template


def test_bactrian_template_exact_strings():
    template = load_template("bactrian")
    assert template.render("Say hi", "") == "### Input:\nSay hi\n\n### Output:\n"
    assert template.render("Say hi", None) == "### Input:\nSay hi\n\n### Output:\n"
    assert template.render("Translate", "cat") == "### Input:\nTranslate\n\ncat\n\n### Output:\n"
    assert template.response_split == "### Output:"


def test_alpaca_template_exact_strings():
    template = load_template("alpaca")
    assert template.render("Add", "1 2") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd\n\n### Input:\n1 2\n\n### Response:\n")
    assert template.render("Add") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nAdd\n\n### Response:\n")


def test_default_is_bactrian_and_response_extraction():
    template = load_template(None)
    assert template.name == "bactrian"
    generated = template.render("Q") + "  The answer.  "
    assert template.extract_response(generated) == "The answer."
    assert template.extract_response("no marker here") == "no marker here"


def test_user_template_from_json_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"prompt_input": "Q: {instruction}\nC: {input}\nA:",
                                "prompt_no_input": "Q: {instruction}\nA:", "response_split": "A:"}))
    template = load_template(str(path))
    assert template.render("x", "y") == "Q: x\nC: y\nA:"
    assert template.extract_response("Q: x\nA: yes") == "yes"


def test_bad_templates_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="Unknown prompt template 'nope'"):
        load_template("nope")
    broken = tmp_path / "broken.json"
    broken.write_text('{"prompt_input": "{instruction} {input}"}')
    with pytest.raises(ConfigError, match="broken.json: template field.*prompt_no_input"):
        load_template(str(broken))


def test_chat_template_uses_the_tokenizers_own(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(ConfigError, match="chat template"):
        load_template("chat").render("hi", "", tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert load_template("chat").render("hi", "there", tokenizer) == "<user>hi\n\nthere<assistant>"
