"""GGUF for llama.cpp, written with the `gguf` package: the merged model (llama and gemma3 architectures) or
the adapter alone as a GGUF LoRA adapter. Tensors are converted and written one at a time."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from ..errors import ModelError
from .state_dict import unpermute
from .weights import BaseWeights, LoraWeights, merged_tensors

ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "gemma3_text": gguf.MODEL_ARCH.GEMMA3,
                 "gemma3": gguf.MODEL_ARCH.GEMMA3}
TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "q8_0": gguf.GGMLQuantizationType.Q8_0}


class GGUFModel:
    """What llama.cpp needs to know about a base model: architecture, hyperparameters, tensor names."""

    def __init__(self, base: BaseWeights):
        self.base = base
        self.config = json.loads((base.folder / "config.json").read_text())
        model_type = self.config.get("model_type")
        if model_type not in ARCHITECTURES:
            raise ModelError(f"--format gguf supports the llama and gemma3 architectures; this base is "
                             f"{model_type!r}. Use --format hf and llama.cpp's convert_hf_to_gguf.py.")
        self.arch = ARCHITECTURES[model_type]
        self.arch_name = gguf.MODEL_ARCH_NAMES[self.arch]
        self.names = gguf.get_tensor_name_map(self.arch, self.config["num_hidden_layers"])
        self.heads = self.config["num_attention_heads"]
        self.kv_heads = self.config.get("num_key_value_heads") or self.heads

    def gguf_name(self, hf_name: str) -> str:
        name = self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelError(f"{hf_name}: no GGUF tensor name for it in the {self.arch_name} architecture.")
        return name

    def transform(self, hf_name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """llama.cpp's llama wants the Meta rotary layout for q/k; its gemma3 multiplies by the norm weight, not
        by (1 + weight) as transformers does."""
        if self.arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith("q_proj.weight"):
            return lambda tensor: unpermute(tensor, self.heads)
        if self.arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith("k_proj.weight"):
            return lambda tensor: unpermute(tensor, self.kv_heads)
        if self.arch == gguf.MODEL_ARCH.GEMMA3 and hf_name.endswith("norm.weight"):
            return lambda tensor: tensor + 1
        return lambda tensor: tensor

    def add_hyperparameters(self, writer: gguf.GGUFWriter) -> None:
        config = self.config
        head_dim = config.get("head_dim") or config["hidden_size"] // self.heads
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(self.heads)
        writer.add_head_count_kv(self.kv_heads)
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_freq_base(_rope_theta(config))
        if self.arch == gguf.MODEL_ARCH.LLAMA:
            writer.add_rope_dimension_count(head_dim)
            writer.add_vocab_size(config["vocab_size"])
        else:
            writer.add_sliding_window(config["sliding_window"])


def _rope_theta(config: dict[str, Any]) -> float:
    if "rope_theta" in config:
        return float(config["rope_theta"])
    parameters = config.get("rope_parameters") or {}
    parameters = parameters.get("full_attention", parameters)
    return float(parameters.get("rope_theta", 10000.0))


def _storage(tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Norms and other 1-D tensors stay f32, as llama.cpp expects; matrices take the requested type."""
    data = tensor.float().numpy()
    if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        return data
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


def _stored_type(shape: list[int], qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    if len(shape) == 1 or qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % 32:
        return gguf.GGMLQuantizationType.F32
    return qtype


def _add_info(writer: gguf.GGUFWriter, name: str, shape: list[int], qtype: gguf.GGMLQuantizationType) -> None:
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor_info(name, shape, np.dtype(np.float16), 2 * int(np.prod(shape)))
    else:
        byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)


def write_gguf(base: BaseWeights, adapter: LoraWeights | None, path: Path, gguf_type: str, tokenizer_source: Path,
               source_gguf: Path | None, name: str) -> None:
    model = GGUFModel(base)
    qtype = TYPES[gguf_type]
    writer = gguf.GGUFWriter(path=None, arch=model.arch_name)
    writer.add_name(name)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
    model.add_hyperparameters(writer)
    add_tokenizer(writer, tokenizer_source, source_gguf)
    plan = []
    for hf_name in base.names:
        shape = base.shape(hf_name)
        stored = _stored_type(shape, qtype)
        _add_info(writer, model.gguf_name(hf_name), shape, stored)
        plan.append((model.transform(hf_name), stored))
    _write(writer, path, (_storage(transform(tensor), stored)
                          for (transform, stored), (_, tensor) in zip(plan, merged_tensors(base, adapter))))


def write_gguf_adapter(base: BaseWeights, adapter: LoraWeights, path: Path, name: str) -> None:
    """The adapter alone, as llama.cpp's LoRA GGUF (`--lora` / llama-cpp-python `lora_path`)."""
    model = GGUFModel(base)
    writer = gguf.GGUFWriter(path=None, arch=model.arch_name)
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(adapter.scale * adapter.rank))
    tensors = []
    for hf_name, pair in adapter.pairs.items():
        target = model.gguf_name(hf_name)
        lora_b = model.transform(hf_name)(pair.b.float()) if hf_name.endswith(("q_proj.weight", "k_proj.weight")) \
            else pair.b.float()
        tensors += [(f"{target}.lora_a", pair.a.float()), (f"{target}.lora_b", lora_b)]
    for tensor_name, tensor in tensors:
        _add_info(writer, tensor_name, list(tensor.shape), gguf.GGMLQuantizationType.F32)
    _write(writer, path, (tensor.numpy() for _, tensor in tensors))


def _write(writer: gguf.GGUFWriter, path: Path, arrays) -> None:
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for array in arrays:
        writer.write_tensor_data(array)
    writer.close()


def add_tokenizer(writer: gguf.GGUFWriter, folder: Path, source_gguf: Path | None) -> None:
    """The tokenizer of the GGUF the base came from when there is one, else built from tokenizer.json."""
    if source_gguf is not None:
        _copy_tokenizer_fields(writer, source_gguf)
        return
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelError(f"{folder}: no tokenizer.json to put in the GGUF file.")
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    model = data["model"]
    if model["type"] != "BPE" or model.get("byte_fallback"):
        raise ModelError(f"{tokenizer_file}: only byte-level BPE tokenizers (GPT-2 style) are written to GGUF here; "
                         "convert this one with llama.cpp's convert_hf_to_gguf.py.")
    vocab = dict(model["vocab"])
    special = {token["content"]: token["id"] for token in data.get("added_tokens", [])}
    vocab.update(special)
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL for token in tokens])
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    writer.add_token_merges(merges)
    gguf.SpecialVocab(folder, load_merges=False).add_to_gguf(writer)


def _copy_tokenizer_fields(writer: gguf.GGUFWriter, source: Path) -> None:
    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub_type)
