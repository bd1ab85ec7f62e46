"""The merged model as a Hugging Face folder: sharded safetensors written shard by shard, tensor by tensor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..fileio import atomic_write_json
from .safetensors_stream import write_streaming
from .weights import BaseWeights, LoraWeights, merged_tensors

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "vocab.json", "merges.txt")


def write_hf(base: BaseWeights, adapter: LoraWeights | None, out: Path, dtype: torch.dtype,
             max_shard_bytes: int) -> None:
    specs = [(name, base.shape(name)) for name in base.names]
    item = torch.tensor([], dtype=dtype).element_size()
    shards = _plan_shards(specs, item, max_shard_bytes)
    stream = merged_tensors(base, adapter)
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file = "model.safetensors" if len(shards) == 1 else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        write_streaming(out / file, shard, dtype, (next(stream) for _ in shard))
        weight_map.update({name: file for name, _ in shard})
    if len(shards) > 1:
        total = sum(item * torch.Size(shape).numel() for _, shape in specs)
        atomic_write_json(out / "model.safetensors.index.json",
                          {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_config(base.folder, out, dtype)
    copy_tokenizer(adapter.folder if adapter else base.folder, base.folder, out)


def _plan_shards(specs: list[tuple[str, list[int]]], item: int, limit: int) -> list[list[tuple[str, list[int]]]]:
    shards: list[list[tuple[str, list[int]]]] = [[]]
    size = 0
    for name, shape in specs:
        tensor_bytes = item * torch.Size(shape).numel()
        if shards[-1] and size + tensor_bytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += tensor_bytes
    return shards


def _write_config(base_folder: Path, out: Path, dtype: torch.dtype) -> None:
    config = json.loads((base_folder / "config.json").read_text())
    config.pop("quantization_config", None)
    config["dtype"] = str(dtype).removeprefix("torch.")
    atomic_write_json(out / "config.json", config)
    if (base_folder / "generation_config.json").is_file():
        shutil.copy(base_folder / "generation_config.json", out / "generation_config.json")


def copy_tokenizer(adapter_folder: Path, base_folder: Path, out: Path) -> None:
    """The tokenizer saved with the adapter (it carries the pad token used in training), else the base's."""
    source = adapter_folder if (adapter_folder / "tokenizer_config.json").is_file() else base_folder
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
