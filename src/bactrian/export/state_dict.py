"""The Meta / llama.cpp `consolidated.00.pth` + `params.json` layout the original export script wrote, with
sizes read from the model's config and the HF rotary permutation of wq / wk undone."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelError
from ..fileio import atomic_write_json
from .weights import BaseWeights, LoraWeights, merged_tensors

META_NAMES = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo transformers' rotary permutation: w.view(heads, 2, d // heads // 2, dim).transpose(1, 2)."""
    rows, columns = weight.shape
    return weight.view(heads, 2, rows // heads // 2, columns).transpose(1, 2).reshape(rows, columns)


def permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' rotary permutation (the inverse of `unpermute`)."""
    rows, columns = weight.shape
    return weight.view(heads, rows // heads // 2, 2, columns).transpose(1, 2).reshape(rows, columns)


def meta_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "tok_embeddings.weight"
    if hf_name == "model.norm.weight":
        return "norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    module = rest.removesuffix(".weight")
    if module not in META_NAMES:
        raise ModelError(f"{hf_name}: no Meta state_dict name for this tensor.")
    return f"layers.{layer}.{META_NAMES[module]}.weight"


def write_state_dict(base: BaseWeights, adapter: LoraWeights, out: Path, dtype: torch.dtype) -> None:
    config = json.loads((base.folder / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ModelError(f"--format state_dict writes the Meta LLaMA layout; this base is "
                         f"{config.get('model_type')!r}. Use --format hf or gguf.")
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    state: dict[str, torch.Tensor] = {}
    for name, tensor in merged_tensors(base, adapter):
        if name.endswith("self_attn.q_proj.weight"):
            tensor = unpermute(tensor, heads)
        elif name.endswith("self_attn.k_proj.weight"):
            tensor = unpermute(tensor, kv_heads)
        state[meta_name(name)] = tensor.to(dtype)
    if "output.weight" not in state:  # tied embeddings
        state["output.weight"] = state["tok_embeddings.weight"]
    torch.save(state, out / "consolidated.00.pth")
    atomic_write_json(out / "params.json", {
        "dim": config["hidden_size"], "n_heads": heads, "n_kv_heads": kv_heads,
        "n_layers": config["num_hidden_layers"], "norm_eps": config["rms_norm_eps"],
        "vocab_size": config["vocab_size"], "hidden_dim": config["intermediate_size"],
        "rope_theta": _rope_theta(config)})


def _rope_theta(config: dict) -> float:
    if "rope_theta" in config:
        return float(config["rope_theta"])
    return float((config.get("rope_parameters") or {}).get("rope_theta", 10000.0))
