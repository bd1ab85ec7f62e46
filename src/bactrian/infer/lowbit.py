"""Low-bit weights for inference (`--quantization int8`): every linear layer of the base model and its LM head
multiply by int8 weights, one scale per output channel, through fbgemm's int8 kernel (x86 CPUs), which
quantizes each call's activations to int8 too (per tensor, from their range: "dynamic" quantization). LoRA's own
small matrices stay in full precision on top, so one quantized base serves every adapter (the QLoRA layout at
inference). A decode step reads a quarter of fp32's bytes of weights; the products differ from fp32's by the
rounding of both operands, so it is chosen by the flag alone, never by `auto` (benchmarks/RESULTS.md measures
what it costs in quality and gains in speed)."""

from __future__ import annotations

import logging
import platform

import torch

log = logging.getLogger(__name__)

SCALE_FLOOR = 1e-8  # a row of zeros still gets a usable scale


class Int8Linear(torch.nn.Module):
    """`linear`'s product through an int8 copy of its weight (per output channel) and fbgemm. The dense weight is
    not kept here (the tied embedding keeps its own for the lookups)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=SCALE_FLOOR).double()
        zeros = torch.zeros(self.out_features, dtype=torch.long)
        quantized = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack(quantized, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        out = torch.ops.quantized.linear_dynamic(rows, self.packed, True)  # reduce_range: fbgemm's x86 rule
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def int8_applies(model: torch.nn.Module) -> bool:
    """On an x86 CPU whose torch has fbgemm (the kernel measured)."""
    weight = next(model.parameters())
    return (weight.device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines
            and platform.machine().lower() in ("x86_64", "amd64"))


def quantize_linear_layers(model: torch.nn.Module) -> int:
    """Replace every plain `nn.Linear` of `model` (PEFT's base layers and the LM head included, LoRA's own matrices
    not) with an `Int8Linear`; returns how many. Call it after the adapters are attached."""
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is torch.nn.Linear and ".lora_" not in f".{name}"]
    for name, linear in targets:
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attribute, Int8Linear(linear))
    log.info("Quantized %d linear layers to int8 (per output channel)", len(targets))
    return len(targets)
