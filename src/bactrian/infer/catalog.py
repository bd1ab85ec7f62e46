"""What a server offers, before any weights: the model names (`base`, each adapter, `auto`), each adapter's card
and prompt template, the `auto` route, and prompts rendered and tokenized. The engine adds the loaded model;
`serve --upstream` uses the catalog alone and lets another server generate."""

from __future__ import annotations

import functools
from typing import Any

from ..adapters import AdapterCard, adapters_in, parse_adapter_specs, read_card
from ..errors import ConfigError, UnknownModel
from ..prompts import PromptTemplate, load_template
from .config import EngineConfig
from .routing import AUTO, BASE, FALLBACKS, Route, choose


class Catalog:
    def __init__(self, tokenizer: Any, default_template: PromptTemplate, cards: list[AdapterCard],
                 auto_fallback: str = "multilingual", context_length: int = 2048):
        if auto_fallback not in FALLBACKS:
            raise ConfigError(f"--auto_fallback {auto_fallback}: choose one of {', '.join(FALLBACKS)}.")
        self.tokenizer, self.default_template = tokenizer, default_template
        self.adapters: dict[str, AdapterCard] = {card.name: card for card in cards}
        self.auto_fallback, self.context_length = auto_fallback, context_length

    @property
    def model_names(self) -> list[str]:
        return [BASE, *self.adapters, AUTO]

    def template_for(self, adapter: str) -> PromptTemplate:
        card = self.adapters.get(adapter)
        return card.template if card is not None and card.template is not None else self.default_template

    def resolve_adapter(self, name: str, user_messages: list[str] | str = "") -> Route:
        """Which model answers a request naming `name`: that one, or for `auto` the choice of `routing.choose`
        on the user's messages (oldest first; a single text is a one-message conversation)."""
        if name == AUTO:
            messages = [user_messages] if isinstance(user_messages, str) else user_messages
            return choose(list(self.adapters.values()), messages, self.auto_fallback)
        if name != BASE and name not in self.adapters:
            raise UnknownModel(f"The model '{name}' does not exist. Available: {', '.join(self.model_names)}.")
        return Route(name)

    def check_loaded(self, name: str, option: str) -> None:
        """A ConfigError naming `option` when `name` is not one of the model names."""
        if name not in self.model_names:
            raise ConfigError(f"{option} {name}: not loaded. Loaded: {', '.join(self.model_names)}.")

    # -- prompts ----------------------------------------------------------------------------------------
    def render(self, adapter: str, instruction: str, input: str = "") -> list[int]:
        template = self.template_for(adapter)
        text = template.render(instruction, input, self.tokenizer)
        return self.tokenizer(text, add_special_tokens=not template.uses_chat_template)["input_ids"]

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token stands for (its vocabulary's longest entry, as its tokenizer spells it,
        which is never shorter than the text): a text longer than context x this cannot fit."""
        return max(map(len, self.tokenizer.get_vocab()), default=1)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def chat_text(self, adapter: str, messages: list[dict[str, str]]) -> str:
        """A conversation as the adapter's prompt text: the tokenizer's chat template for `chat`, else each
        earlier exchange rendered with the instruction template, then the last user message as the instruction
        (consecutive user messages joined by a blank line). Linear in the conversation's length."""
        template = self.template_for(adapter)
        if template.uses_chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        parts = [f"{m['content']}\n\n" for m in messages if m["role"] == "system"]
        user: list[str] = []  # the user messages since the last answer
        for message in (m for m in messages if m["role"] != "system"):
            if message["role"] == "user":
                if user == [""]:  # an empty first message is replaced, not joined (as the joined text was empty)
                    user.clear()
                user.append(message["content"])
            else:
                parts += [template.render("\n\n".join(user)), message["content"], "\n\n"]
                user = []
        return "".join(parts) + template.render("\n\n".join(user))

    def encode_chat(self, adapter: str, messages: list[dict[str, str]]) -> list[int]:
        return self.encode_chat_text(adapter, self.chat_text(adapter, messages))

    def encode_chat_text(self, adapter: str, text: str) -> list[int]:
        """The tokens of a conversation rendered by `chat_text`."""
        return self.tokenizer(text, add_special_tokens=not self.template_for(adapter).uses_chat_template)["input_ids"]


def adapter_specs(config: EngineConfig) -> list[str]:
    """--lora_weights, then every adapter below --adapters_dir."""
    return list(config.lora_weights) + (adapters_in(config.adapters_dir) if config.adapters_dir else [])


def context_length(config: Any) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return 2048


def build_catalog(config: EngineConfig) -> Catalog:
    """The catalog without the model's weights: its tokenizer and config, and each adapter's card."""
    from transformers import AutoConfig

    from ..models import load_tokenizer, resolve

    source = resolve(config.base_model)
    cards = [read_card(name, path) for name, path in parse_adapter_specs(adapter_specs(config)).items()]
    return Catalog(load_tokenizer(source.path), load_template(config.prompt_template_name), cards,
                   config.auto_fallback, context_length(AutoConfig.from_pretrained(source.path)))
