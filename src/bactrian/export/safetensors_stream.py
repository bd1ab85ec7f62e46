"""Write safetensors files one tensor at a time. The format is a little-endian u64 header length, a JSON
header of names, dtypes, shapes and byte offsets, then the raw bytes; every shape and dtype is known before
any data is read, so the header goes first and each tensor follows as soon as it is computed."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import ModelError

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_streaming(path: Path, specs: list[tuple[str, list[int]]], dtype: torch.dtype,
                    tensors: Iterable[tuple[str, torch.Tensor]], metadata: dict[str, str] | None = None) -> None:
    """`specs` lists (name, shape) in the order `tensors` will yield them."""
    item = torch.tensor([], dtype=dtype).element_size()
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape in specs:
        size = item * _numel(shape)
        header[name] = {"dtype": DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    expected = iter(specs)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name, tensor in tensors:
            want_name, want_shape = next(expected)
            if name != want_name or list(tensor.shape) != want_shape:
                raise ModelError(f"tensor {name} {list(tensor.shape)} does not match the header ({want_name})")
            handle.write(tensor.to(dtype).contiguous().view(torch.uint8).numpy().data)  # no extra copy


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
