"""Swapping the base model's linear layers for faster ones at inference (`prepack.py`, `lowbit.py`): every plain
`nn.Linear` (PEFT's base layers and the LM head included), never LoRA's own small matrices."""

from __future__ import annotations

from collections.abc import Callable

import torch


def replace_linear_layers(model: torch.nn.Module, replacement: Callable[[torch.nn.Linear], torch.nn.Module],
                          keep: tuple[str, ...] = ()) -> int:
    """Replace each plain `nn.Linear` of `model` whose name holds none of `keep` with `replacement(linear)`;
    returns how many. Call it after the adapters are attached."""
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is torch.nn.Linear and ".lora_" not in f".{name}"
               and not any(part in name for part in keep)]
    for name, linear in targets:
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attribute, replacement(linear))
    return len(targets)
