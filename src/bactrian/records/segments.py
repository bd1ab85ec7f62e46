"""Byte segments of a JSONL file: runs of whole lines, cut at line ends, that can be read apart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Segment:
    """A run of whole lines of a JSONL file: bytes [start, end), the first of them line `first_line`."""

    start: int
    end: int
    first_line: int


def jsonl_segments(path: Path, size: int) -> list[Segment]:
    """Cut a JSONL file into segments of about `size` bytes at line ends, numbering their first lines (one pass
    over the file, counting newlines in C)."""
    total = path.stat().st_size
    segments: list[Segment] = []
    start, line = 0, 1
    with open(path, "rb") as handle:
        while start < total:
            handle.seek(min(start + size, total))
            handle.readline()  # to the end of the line the cut falls in
            end = handle.tell()
            segments.append(Segment(start, end, line))
            handle.seek(start)
            line += _count_newlines(handle, end - start)
            start = end
    return segments


def _count_newlines(handle: Any, length: int, block: int = 1 << 24) -> int:
    count = 0
    while length > 0:
        chunk = handle.read(min(block, length))
        count += chunk.count(b"\n")
        length -= len(chunk)
    return count
