"""Prompt templates: the original's `bactrian` and `alpaca` strings, the tokenizer's chat template, user JSON files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    prompt_input: str
    prompt_no_input: str
    response_split: str
    uses_chat_template: bool = False

    def render(self, instruction: str, input: str | None = None, tokenizer: Any = None) -> str:
        """The prompt up to where the model's answer starts."""
        if self.uses_chat_template:
            return _render_chat(tokenizer, instruction, input)
        if input:
            return self.prompt_input.format(instruction=instruction, input=input)
        return self.prompt_no_input.format(instruction=instruction)

    def extract_response(self, text: str) -> str:
        """The answer part of a generated text (the whole text after the last response marker)."""
        if self.response_split and self.response_split in text:
            return text.split(self.response_split)[-1].strip()
        return text.strip()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prompt_input": self.prompt_input,
            "prompt_no_input": self.prompt_no_input,
            "response_split": self.response_split,
            "uses_chat_template": self.uses_chat_template,
        }


BUILTIN: dict[str, PromptTemplate] = {
    "bactrian": PromptTemplate(
        name="bactrian",
        prompt_input="### Input:\n{instruction}\n\n{input}\n\n### Output:\n",
        prompt_no_input="### Input:\n{instruction}\n\n### Output:\n",
        response_split="### Output:",
    ),
    "alpaca": PromptTemplate(
        name="alpaca",
        prompt_input=(
            "Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        prompt_no_input=(
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Response:\n"
        ),
        response_split="### Response:",
    ),
    "raw": PromptTemplate(  # the text as it is: benchmarks' own prompts for a base model (lm-eval's format)
        name="raw", prompt_input="{instruction}\n\n{input}", prompt_no_input="{instruction}", response_split=""
    ),
    "chat": PromptTemplate(
        name="chat", prompt_input="", prompt_no_input="", response_split="", uses_chat_template=True
    ),
}

_REQUIRED_KEYS = ("prompt_input", "prompt_no_input", "response_split")


def load_template(name_or_path: str | None) -> PromptTemplate:
    """A built-in template by name, or a JSON file with the original's keys."""
    name_or_path = name_or_path or "bactrian"
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    path = Path(name_or_path)
    if not path.suffix == ".json" or not path.is_file():
        raise ConfigError(
            f"Unknown prompt template {name_or_path!r}: use one of {', '.join(BUILTIN)} "
            "or the path of a JSON file with keys prompt_input, prompt_no_input, response_split."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    missing = [key for key in _REQUIRED_KEYS if not isinstance(data.get(key), str)]
    if missing:
        raise ConfigError(f"{path}: template field(s) {', '.join(missing)} missing or not a string")
    for key in ("prompt_input", "prompt_no_input"):
        if "{instruction}" not in data[key]:
            raise ConfigError(f"{path}: field {key} must contain {{instruction}}")
    if "{input}" not in data["prompt_input"]:
        raise ConfigError(f"{path}: field prompt_input must contain {{input}}")
    return PromptTemplate(path.stem, data["prompt_input"], data["prompt_no_input"], data["response_split"])


def template_from_dict(data: dict[str, Any]) -> PromptTemplate:
    """Rebuild a template saved in a manifest (`PromptTemplate.to_dict`)."""
    return PromptTemplate(**{key: data[key] for key in PromptTemplate.__dataclass_fields__ if key in data})


def _render_chat(tokenizer: Any, instruction: str, input: str | None) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "Prompt template 'chat' needs a tokenizer with a chat template; this model has none "
            "(use --prompt_template_name bactrian or alpaca)."
        )
    content = f"{instruction}\n\n{input}" if input else instruction
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
