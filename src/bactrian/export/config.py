"""Options of `bactrian export`."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import option


@dataclass
class ExportConfig:
    base_model: str = option("default", "Base model the adapter was trained on: 'default', a hub id, a local "
                                        "folder or a .gguf file.")
    lora_weights: list[str] = option([], "The adapter folder to merge, a path or name=path as for chat and serve "
                                         "(one; optional for hf and gguf: then the base alone is converted).",
                                     repeat=True)
    output_dir: str = option("", "Folder to write; must be empty or absent unless --overwrite.")
    format: str = option("hf", "hf (merged Hugging Face folder), state_dict (Meta consolidated.00.pth), gguf "
                               "(merged, for llama.cpp) or gguf_adapter (the LoRA alone, for llama.cpp).",
                         choices=("hf", "state_dict", "gguf", "gguf_adapter"))
    dtype: str = option("float32", "Weights dtype for hf and state_dict.", choices=("float32", "float16", "bfloat16"),
                        old_values={"f32": "float32", "f16": "float16", "bf16": "bfloat16"})
    gguf_type: str = option("f16", "Matrix type for gguf (norms stay f32).", choices=("f32", "f16", "q8_0"))
    max_shard_size_mb: int = option(2000, "Largest safetensors shard for hf, in MB.")
    overwrite: bool = option(False, "Replace a non-empty --output_dir.")
