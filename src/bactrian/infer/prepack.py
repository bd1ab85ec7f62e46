"""Weight prepacking (not sequence packing): linear layers that multiply by weights reordered once for oneDNN, for
CPU inference with the same fp32 products.

`F.linear` on a CPU multiplies by the weight as stored (MKL's sgemm), which at the few rows of a decode step runs
far below the machine's speed. oneDNN with the weight reordered once into its blocked layout is what
`torch.compile`'s CPU freezing pass and Intel's extension use; the engine does the same without compiling. On a
2-core AVX2 CPU, Gemma 3 270M's 262k x 640 head at 16 rows takes 64-70 ms instead of 156-194 ms, and a whole
decode step of 16 rows 158 ms instead of 293 ms (benchmarks/RESULTS.md, MGSM time). The products are the same
up to the order of fp32 sums. The price is memory: the prepacked copy sits beside each weight (the dense one stays,
for the tied embedding and PEFT)."""

from __future__ import annotations

import logging
import platform

import torch

from .base_layers import replace_linear_layers

log = logging.getLogger(__name__)

PREPACK_ROWS = 128  # oneDNN's layout hint; measured best from 1 to 512 rows
# PyTorch's oneDNN binding compiles and keeps a primitive for every input shape it meets (~0.5 MB each, up to 1024
# of them), so the rows are padded up to one of a few sizes (past 8, a multiple of 8: at most 7 rows wasted); more
# rows than the last (prefill chunks) go through F.linear, where MKL runs near full speed anyway.
ROW_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)


class PrepackedLinear(torch.nn.Linear):
    """`linear` (its weight and bias shared, not copied) computing through its oneDNN-prepacked weight.
    Inference only: no gradient reaches the prepacked copy."""

    def __init__(self, linear: torch.nn.Linear):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.prepacked = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PREPACK_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        count = len(rows)
        bucket = next((size for size in ROW_BUCKETS if size >= count), None)
        if bucket is None:
            return super().forward(x)
        if bucket > count:
            rows = torch.nn.functional.pad(rows, (0, 0, 0, bucket - count))
        out = prepacked_product(rows, self.prepacked, self.bias)
        return out[:count].reshape(*x.shape[:-1], self.out_features)


def prepacked_product(rows: torch.Tensor, prepacked: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(rows, prepacked, bias, "none", [], "")


def prepacking_applies(model: torch.nn.Module) -> bool:
    """fp32 weights on an x86 CPU whose torch has oneDNN (where it was measured)."""
    weight = next(model.parameters())
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and x86_with_onednn()


def x86_with_onednn() -> bool:
    return torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64")


def prepack_linear_layers(model: torch.nn.Module) -> int:
    """Replace every plain `nn.Linear` of `model` (PEFT's base layers and the LM head included, LoRA's own small
    matrices not) with a `PrepackedLinear`; returns how many. Call it after the adapters are attached."""
    count = replace_linear_layers(model, PrepackedLinear)
    log.info("Prepacked %d linear layers for oneDNN", count)
    return count
