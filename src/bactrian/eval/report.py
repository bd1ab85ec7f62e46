"""Accuracy with confidence intervals, and the reports: JSON, a Markdown table, a bar chart per task."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..charts import figure_and_axes, save_png
from ..fileio import atomic_write_bytes, atomic_write_json


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at 0%, 100% and small n)."""
    if total == 0:
        return 0.0, 0.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(predictions)
    correct = sum(p["pred"] == p["label"] for p in predictions)
    correct_norm = sum(p["pred_norm"] == p["label"] for p in predictions)
    return {"n": n, "acc": correct / n, "acc_ci95": wilson_interval(correct, n),
            "acc_norm": correct_norm / n, "acc_norm_ci95": wilson_interval(correct_norm, n)}


def markdown(results: dict[str, Any]) -> str:
    """Per task: languages as rows, models as columns (accuracy %, ± half the 95% interval), averages last."""
    lines = ["# Evaluation", ""]
    for task, by_model in results["tasks"].items():
        models = list(by_model)
        langs = sorted({lang for per_lang in by_model.values() for lang in per_lang})
        lines += [f"## {task} (accuracy %, 95% interval)", "", "| language | " + " | ".join(models) + " |",
                  "| --- |" + " ---: |" * len(models)]
        for lang in langs:
            cells = [_cell(by_model[model].get(lang)) for model in models]
            lines.append(f"| {lang} | " + " | ".join(cells) + " |")
        averages = [100 * sum(s["acc"] for s in by_model[m].values()) / len(by_model[m]) for m in models]
        lines += ["| **average** | " + " | ".join(f"**{a:.1f}**" for a in averages) + " |", ""]
    return "\n".join(lines) + "\n"


def _cell(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "-"
    low, high = summary["acc_ci95"]
    return f"{100 * summary['acc']:.1f} ± {50 * (high - low):.1f}"


def bar_chart(task: str, by_model: dict[str, dict[str, Any]], path: Path) -> None:
    models = list(by_model)
    langs = sorted({lang for per_lang in by_model.values() for lang in per_lang})
    width = 0.8 / len(models)
    figure, axes = figure_and_axes(max(6, 0.6 * len(langs) * len(models) + 2))
    for number, model in enumerate(models):
        values = [100 * by_model[model][lang]["acc"] if lang in by_model[model] else 0 for lang in langs]
        errors = [[100 * (by_model[model][lang]["acc"] - by_model[model][lang]["acc_ci95"][0]) for lang in langs],
                  [100 * (by_model[model][lang]["acc_ci95"][1] - by_model[model][lang]["acc"]) for lang in langs]]
        axes.bar([i + number * width for i in range(len(langs))], values, width, yerr=errors, capsize=2, label=model)
    axes.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(langs))], langs)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"{task}: accuracy per language (95% interval)")
    axes.legend()
    save_png(figure, path)


def write_reports(results: dict[str, Any], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / "results.json", results)
    atomic_write_bytes(output_dir / "report.md", markdown(results).encode("utf-8"))
    for task, by_model in results["tasks"].items():
        bar_chart(task, by_model, output_dir / f"{task}.png")
