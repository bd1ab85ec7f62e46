"""The option machinery every verb's config uses (a dataclass field with its help text, which the CLI shows),
and the options of loading a base model, shared by the verbs that load one."""

from __future__ import annotations

from dataclasses import dataclass, field


def option(default, help: str, **extra):
    """A dataclass field whose help text the CLI shows."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class ModelOptions:
    base_model: str = option("default", "Base model: 'default' (embedded Gemma 3 270M), a hub id, a local "
                                        "folder or a .gguf file.")
    load_8bit: bool = option(False, "Load the base model in 8-bit (bitsandbytes; on a CPU "
                                       "too, from bitsandbytes 0.50).")
    load_4bit: bool = option(False, "Load the base model in 4-bit NF4 (bitsandbytes; on a "
                                       "CPU too, from bitsandbytes 0.50): QLoRA when training.")
