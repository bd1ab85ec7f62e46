"""Options of `bactrian demo` (the verbs of the packages have theirs in each package's config.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .options import option


@dataclass
class DemoConfig:
    base_model: str = option("default", "Base model to tune (default: the embedded Gemma 3 270M).")
    output_dir: str = option("./bactrian-demo", "Where the demo adapter goes.")
    max_steps: int = option(40, "Optimizer steps.")
    global_batch_size: int = option(8, "Examples per optimizer step.", old_names=("batch_size",))
    micro_batch_size: int = option(8, "Examples or packed rows per forward pass.")
    learning_rate: float = option(1e-3, "Peak learning rate.")
    lora_r: int = option(16, "LoRA rank.")
    max_new_tokens: int = option(48, "Tokens generated per answer.")
