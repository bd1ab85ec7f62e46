"""Streaming access to base weights and LoRA deltas: one tensor at a time, never the whole model."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter_tensors
from ..errors import ModelError


class BaseWeights:
    """The tensors of a Hugging Face model folder (single or sharded safetensors), read one by one."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (folder / "model.safetensors").is_file():
            with safe_open(folder / "model.safetensors", "pt") as handle:
                weight_map = {name: "model.safetensors" for name in handle.keys()}
        else:
            raise ModelError(f"{folder}: no model.safetensors (or index); export reads safetensors weights only.")
        self.files = weight_map

    @property
    def names(self) -> list[str]:
        return list(self.files)

    def shape(self, name: str) -> list[int]:
        with safe_open(self.folder / self.files[name], "pt") as handle:
            return list(handle.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        with safe_open(self.folder / self.files[name], "pt") as handle:
            return handle.get_tensor(name)


@dataclass
class LoraPair:
    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scale: float


class LoraWeights:
    """A PEFT LoRA adapter's tensors: its A/B pairs keyed by the base weight they change."""

    def __init__(self, folder: Path):
        self.folder = folder
        config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ModelError(f"--lora_weights {folder}: {path.name} is missing.")
        self.config = json.loads(config_path.read_text())
        if self.config.get("peft_type", "LORA") != "LORA" or self.config.get("use_dora"):
            raise ModelError(f"{folder}: only plain LoRA adapters can be exported (found "
                             f"{self.config.get('peft_type')}{', DoRA' if self.config.get('use_dora') else ''}).")
        if self.config.get("fan_in_fan_out"):
            raise ModelError(f"{folder}: fan_in_fan_out adapters (GPT-2 Conv1D layers) are not supported.")
        r, alpha = self.config["r"], self.config["lora_alpha"]
        self.rank = r
        self.scale = alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r
        self.pairs = self._pairs(load_adapter_tensors(weights_path))

    def _pairs(self, tensors: dict[str, torch.Tensor]) -> dict[str, LoraPair]:
        pairs: dict[str, LoraPair] = {}
        for key in tensors:
            if ".lora_A." not in key:
                continue
            module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            b_key = key.replace(".lora_A.", ".lora_B.")
            if b_key not in tensors:
                raise ModelError(f"{self.folder}: {key} has no matching lora_B tensor.")
            pairs[f"{module}.weight"] = LoraPair(tensors[key], tensors[b_key], self.scale)
        if not pairs:
            raise ModelError(f"{self.folder}: {ADAPTER_WEIGHTS} holds no LoRA tensors.")
        return pairs

    def check_fits(self, base: BaseWeights) -> None:
        """An adapter trained on another base: a clear error naming the first tensor that does not fit."""
        for name, pair in self.pairs.items():
            if name not in base.files:
                raise ModelError(f"--lora_weights {self.folder}: the adapter changes {name}, which this base model "
                                 "does not have; was it trained on another base?")
            out_features, in_features = base.shape(name)
            if pair.a.shape[1] != in_features or pair.b.shape[0] != out_features:
                raise ModelError(f"--lora_weights {self.folder}: {name} is {out_features}x{in_features} in the base "
                                 f"but the adapter expects {pair.b.shape[0]}x{pair.a.shape[1]}; it was trained on "
                                 "another base.")

    def check_finite(self) -> None:
        bad = [name for name, pair in self.pairs.items()
               if not (torch.isfinite(pair.a).all() and torch.isfinite(pair.b).all())]
        if bad:
            raise ModelError(f"--lora_weights {self.folder}: {len(bad)} LoRA pair(s) hold NaN or inf (first: "
                             f"{bad[0]}); a merge would write a broken model. Retrain it, or export an earlier "
                             "checkpoint.")

    def check_changes_something(self) -> None:
        if all(not torch.any(pair.b) for pair in self.pairs.values()):
            raise ModelError(f"--lora_weights {self.folder}: every lora_B is zero, so the adapter changes nothing "
                             "(an untrained adapter?). Refusing to write a copy of the base model.")

    def delta(self, name: str) -> torch.Tensor | None:
        pair = self.pairs.get(name)
        if pair is None:
            return None
        return (pair.b.double() @ pair.a.double() * pair.scale).float()


def merged_tensors(base: BaseWeights, adapter: LoraWeights | None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every base tensor in fp32, with the adapter's delta added where it has one (computed in float64)."""
    for name in base.names:
        tensor = base.get(name).float()
        delta = adapter.delta(name) if adapter is not None else None
        yield name, tensor if delta is None else tensor + delta
