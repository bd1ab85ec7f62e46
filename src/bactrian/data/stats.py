"""`bactrian data stats`: rows per language and mean tokens of instruction, input and output for a tokenizer
(the paper's table), and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..charts import figure_and_axes, save_png
from ..fileio import atomic_write_bytes, atomic_write_json
from ..records import read_rows
from .config import StatsConfig


def stats(config: StatsConfig) -> dict[str, Any]:
    from ..models import load_tokenizer, resolve

    tokenizer = load_tokenizer(resolve(config.tokenizer).path)
    rows = read_rows(config.input)
    table: dict[str, Any] = {}
    for lang in sorted({row["lang"] for row in rows}):
        lang_rows = [row for row in rows if row["lang"] == lang]
        means = {field: sum(len(tokenizer(row.get(field) or "", add_special_tokens=False)["input_ids"])
                            for row in lang_rows) / len(lang_rows) for field in ("instruction", "input", "output")}
        table[lang] = {"rows": len(lang_rows), **{f"mean_{k}_tokens": round(v, 1) for k, v in means.items()},
                       "mean_total_tokens": round(sum(means.values()), 1)}
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "stats.json", table)
    lines = ["| language | rows | instruction | input | output | total |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {lang} | {s['rows']} | {s['mean_instruction_tokens']} | {s['mean_input_tokens']} | "
              f"{s['mean_output_tokens']} | {s['mean_total_tokens']} |" for lang, s in table.items()]
    atomic_write_bytes(out / "stats.md", ("\n".join(lines) + "\n").encode("utf-8"))
    _chart(table, out / "stats.png")
    return table


def _chart(table: dict[str, Any], path: Path) -> None:
    langs = list(table)
    figure, axes = figure_and_axes(max(6, 0.5 * len(langs) + 2))
    bottom = [0.0] * len(langs)
    for field in ("instruction", "input", "output"):
        values = [table[lang][f"mean_{field}_tokens"] for lang in langs]
        axes.bar(langs, values, bottom=bottom, label=field)
        bottom = [b + v for b, v in zip(bottom, values)]
    axes.set_ylabel("mean tokens per example")
    axes.set_title("Mean tokens per example by language")
    axes.legend()
    save_png(figure, path)
