"""The reports of `bactrian eval`: results.json, a Markdown table per task and metric (each value with its 95%
interval), a bar chart and a heatmap per task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..charts import figure_and_axes, save_png
from ..fileio import atomic_write_bytes, atomic_write_json
from .tasks.task_file import TASK_FILE_SUFFIXES

ACCURACY = [["acc", "accuracy %", 100.0]]  # the metrics of a multiple-choice task: key, label, scale


def markdown(results: dict[str, Any]) -> str:
    """Per task and metric: languages (or directions) as rows, models as columns (the value and its 95% interval
    as [low, high]), averages last."""
    lines = ["# Evaluation", ""]
    for task, by_model in results["tasks"].items():
        models = list(by_model)
        groups = sorted({group for per_group in by_model.values() for group in per_group})
        notes = results.get("notes", {}).get(task)
        lines += [notes, ""] if notes else []
        for key, label, scale in results.get("metrics", {}).get(task, ACCURACY):
            lines += [f"## {task}: {label}, 95% interval", "",
                      "| language | " + " | ".join(models) + " |", "| --- |" + " ---: |" * len(models)]
            for group in groups:
                cells = [_cell(by_model[model].get(group), key, scale) for model in models]
                lines.append(f"| {group} | " + " | ".join(cells) + " |")
            averages = [_average(by_model[model], key, scale) for model in models]
            lines += ["| **average** | " + " | ".join(f"**{a:.1f}**" if a is not None else "-" for a in averages)
                      + " |", ""]
        lines += _failures(task, results.get("examples", {}).get(task, {}))
    return "\n".join(lines) + "\n"


def _failures(task: str, examples: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Each answer that failed a check which says what failed it (language confusion: the line or words)."""
    failed = [(model, row) for model, rows in examples.items() for row in rows if row.get("failed")]
    if not failed:
        return []
    lines = [f"### {task}: the {len(failed)} answers that failed", "", "| model | id | level | what failed |",
             "| --- | --- | --- | --- |"]
    for model, row in failed:
        level = "line" if row.get("line_pass") is False else "word"
        text = " ".join(str(row["failed"]).split()).replace("|", "\\|")
        lines.append(f"| {model} | {row['id']} | {level} | {text[:117] + '...' if len(text) > 120 else text} |")
    return [*lines, ""]


def _average(per_group: dict[str, dict[str, Any]], key: str, scale: float) -> float | None:
    values = [summary[key] for summary in per_group.values() if summary.get(key) is not None]
    return scale * sum(values) / len(values) if values else None


def _cell(summary: dict[str, Any] | None, key: str, scale: float) -> str:
    if summary is None or summary.get(key) is None:
        return "-"
    low, high = summary[f"{key}_ci95"]
    return f"{scale * summary[key]:.1f} [{scale * low:.1f}, {scale * high:.1f}]"


def _chart_name(task: str, kind: str) -> str:
    return f"{Path(task).stem if task.endswith(TASK_FILE_SUFFIXES) else task}{kind}.png"


def _interval(summary: dict[str, Any] | None, key: str, scale: float) -> tuple[float, float, float]:
    """A bar: the value, and how far its 95% interval reaches below and above it (0s when there is none)."""
    if summary is None or summary.get(key) is None:
        return 0.0, 0.0, 0.0
    value, (low, high) = scale * summary[key], summary[f"{key}_ci95"]
    return value, value - scale * low, scale * high - value


def bar_chart(task: str, by_model: dict[str, dict[str, Any]], metric: list, path: Path) -> None:
    key, label, scale = metric
    models = list(by_model)
    groups = sorted({group for per_group in by_model.values() for group in per_group})
    width = 0.8 / len(models)
    figure, axes = figure_and_axes(max(6, 0.6 * len(groups) * len(models) + 2))
    for number, model in enumerate(models):
        bars = [_interval(by_model[model].get(group), key, scale) for group in groups]
        axes.bar([i + number * width for i in range(len(groups))], [bar[0] for bar in bars], width,
                 yerr=[[bar[1] for bar in bars], [bar[2] for bar in bars]], capsize=2, label=model)
    axes.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(groups))], groups)
    axes.set_ylabel(label)
    axes.set_title(f"{task}: {label} (95% interval)")
    axes.legend()
    save_png(figure, path)


def heatmap(task: str, by_model: dict[str, dict[str, Any]], metric: list, path: Path) -> None:
    """Models (rows) x languages (columns) of the task's first metric; below the base, each cell also gives the
    difference from the base: which adapter helps which language."""
    import numpy as np

    key, label, scale = metric
    models = list(by_model)
    groups = sorted({group for per_group in by_model.values() for group in per_group})
    values = np.array([[scale * by_model[m][g][key] if (by_model[m].get(g) or {}).get(key) is not None else np.nan
                        for g in groups] for m in models])
    figure, axes = figure_and_axes(max(6, 0.9 * len(groups) + 2), max(2.5, 0.6 * len(models) + 1.5))
    image = axes.imshow(values, cmap="viridis", aspect="auto")
    for row, model in enumerate(models):
        for column in range(len(groups)):
            if not np.isnan(values[row, column]):
                delta = values[row, column] - values[0, column] if row and models[0] == "base" else None
                text = f"{values[row, column]:.0f}" + (f"\n{delta:+.0f}" if delta is not None and
                                                          not np.isnan(delta) else "")
                axes.text(column, row, text, ha="center", va="center", fontsize=7, color="white")
    axes.set_xticks(range(len(groups)), groups, rotation=45 if len(groups) > 12 else 0)
    axes.set_yticks(range(len(models)), models)
    axes.set_title(f"{task}: {label}")
    figure.colorbar(image, ax=axes)
    save_png(figure, path)


def write_reports(results: dict[str, Any], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / "results.json", results)
    atomic_write_bytes(output_dir / "report.md", markdown(results).encode("utf-8"))
    for task, by_model in results["tasks"].items():
        metric = results.get("metrics", {}).get(task, ACCURACY)[0]
        bar_chart(task, by_model, metric, output_dir / _chart_name(task, ""))
        heatmap(task, by_model, metric, output_dir / _chart_name(task, "-heatmap"))
