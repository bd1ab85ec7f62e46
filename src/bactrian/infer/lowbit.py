"""Fewer bytes of weights per decoded token, on a CPU, chosen by `--quantization` alone (never by `auto`):

- `int8`: the linear layers of the base model and its LM head multiply int8 weights (one scale per output
  channel) by int8 activations (one scale per token), accumulating in int32 (`torch._int_mm`), so a row's product
  is exact integer arithmetic on its own values: what it is batched with changes nothing. The MLP's down
  projection stays in full precision: its inputs carry the outlier channels that per-token int8 loses (on Gemma 3
  270M its held-out loss rose 2.0% with it in int8, 0.9% without: see benchmarks/RESULTS.md).
- `fp16`: every linear layer and the head keep their weights in fp16 (half of fp32's bytes), packed once for
  fbgemm's fp16 GEMM, which widens them to fp32 in registers: activations and sums stay fp32, so the only error
  is the weights' rounding to fp16 (11 significant bits, bf16 has 8), and a row's product does not depend on its
  batch. At one row it reads the weights near the memory's bandwidth, where bf16's and int8's kernels read at
  half of it (benchmarks/decode_profile.py).

LoRA's own matrices stay in full precision on top, so one quantized base serves every adapter (the QLoRA layout
at inference)."""

from __future__ import annotations

import logging

import torch

from .base_layers import replace_linear_layers

log = logging.getLogger(__name__)

SCALE_FLOOR = 1e-8  # a row of zeros still gets a usable scale
FULL_PRECISION = ("down_proj",)  # layers whose inputs carry outlier channels


def int8_rows(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` as int8 with one scale per slice along `dim` (symmetric, 127 steps each side), and the scales."""
    scales = (x.abs().amax(dim=dim, keepdim=True) / 127).clamp(min=SCALE_FLOOR)
    return (x / scales).round_().clamp_(-127, 127).to(torch.int8), scales


class Int8Linear(torch.nn.Module):
    """`linear`'s product through int8 weights and int8 activations. Its dense weight is not kept (a tied
    embedding keeps its own, for the lookups)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scales = int8_rows(linear.weight.detach().float(), dim=1)
        self.register_buffer("weight_t", weight.t().contiguous())  # [in, out]: what _int_mm multiplies by
        self.register_buffer("weight_scales", scales.view(1, -1))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, scales = int8_rows(x.reshape(-1, self.in_features).float(), dim=1)
        out = torch._int_mm(rows, self.weight_t).float() * scales * self.weight_scales
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class Fp16Linear(torch.nn.Module):
    """`linear`'s product through fp16 weights packed for fbgemm, in fp32 arithmetic. The packed weight is an
    opaque object, not a tensor: the module holds no dense copy (a tied embedding keeps its own, for lookups)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.quantized.linear_dynamic_fp16(x.reshape(-1, self.in_features).float(), self.packed)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


MODES = {"int8": (Int8Linear, FULL_PRECISION), "fp16": (Fp16Linear, ())}  # the layer, and the layers kept


def lowbit_applies(model: torch.nn.Module, mode: str) -> bool:
    """On a CPU, where these kernels were measured (on a GPU, load the base in 8 bits with bitsandbytes instead);
    fp16 needs fbgemm (x86)."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return on_cpu and (mode != "fp16" or "fbgemm" in torch.backends.quantized.supported_engines)


def quantize_linear_layers(model: torch.nn.Module, mode: str = "int8") -> int:
    """Replace every plain `nn.Linear` of `model` (PEFT's base layers and the LM head included; LoRA's own matrices
    and the layers `mode` keeps not) with its low-bit layer; returns how many. Call it after the adapters are
    attached."""
    layer, keep = MODES[mode]
    count = replace_linear_layers(model, layer, keep=keep)
    log.info("Replaced %d linear layers with %s", count, layer.__name__)
    return count
