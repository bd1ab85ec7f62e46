"""Low-bit weights for inference (`--quantization int8`): the linear layers of the base model and its LM head
multiply int8 weights (one scale per output channel) by int8 activations (one scale per token), accumulating in
int32 (`torch._int_mm`), so a row's product is exact integer arithmetic on its own values: what it is batched with
changes nothing. The MLP's down projection stays in full precision: its inputs carry the outlier channels that
per-token int8 loses (on Gemma 3 270M its held-out loss rose 2.0% with it in int8, 0.9% without: see
benchmarks/RESULTS.md). LoRA's own matrices stay in full precision on top, so one quantized base serves every
adapter (the QLoRA layout at inference). Chosen by the flag alone, never by `auto`."""

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


def int8_applies(model: torch.nn.Module) -> bool:
    """On a CPU, where `_int_mm` was measured (on a GPU, load the base in 8 bits with bitsandbytes instead)."""
    return next(model.parameters()).device.type == "cpu"


def quantize_linear_layers(model: torch.nn.Module) -> int:
    """Replace every plain `nn.Linear` of `model` (PEFT's base layers and the LM head included; LoRA's own matrices
    and the FULL_PRECISION layers not) with an `Int8Linear`; returns how many. Call it after the adapters are
    attached."""
    count = replace_linear_layers(model, Int8Linear, keep=FULL_PRECISION)
    log.info("Quantized %d linear layers to int8 (per output channel and per token)", count)
    return count
