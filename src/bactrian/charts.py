"""Saving matplotlib figures the way every other output is written: complete, or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .fileio import atomic_write_with


def figure_and_axes(width: float, height: float = 4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def save_png(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    atomic_write_with(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
