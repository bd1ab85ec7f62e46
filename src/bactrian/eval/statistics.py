"""Interval statistics of evaluation results, each a value with its 95% interval: Wilson intervals of shares
(accuracy, pass rates, exact match), percentile bootstrap intervals of means and of sacrebleu's corpus scores,
and the harmonic mean of two shares (LCPR) with the harmonic mean of their bounds."""

from __future__ import annotations

import math
import random
from typing import Any

Interval = tuple[float, float]


def enclosing(value: float, interval: Interval) -> Interval:
    """An interval that holds its value: floating-point rounding (a Wilson bound of 100% computed as
    0.9999999999999999) or a combination of bounds (LCPR's) may leave the value just outside."""
    low, high = interval
    if not all(math.isfinite(bound) for bound in (value, low, high)):
        raise ValueError(f"interval ({low}, {high}) of {value}: not finite")
    return min(low, value), max(high, value)


def wilson_interval(correct: int, total: int, z: float = 1.96) -> Interval:
    """95% Wilson score interval of a proportion (sound at 0%, 100% and small n)."""
    if total == 0:
        return 0.0, 0.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return enclosing(p, (max(0.0, centre - half), min(1.0, centre + half)))


def summarise(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy and normalised accuracy of multiple-choice predictions (`pred`, `pred_norm`, `label`), each with
    its Wilson interval."""
    n = len(predictions)
    correct = sum(p["pred"] == p["label"] for p in predictions)
    correct_norm = sum(p["pred_norm"] == p["label"] for p in predictions)
    return {"n": n, "acc": correct / n, "acc_ci95": wilson_interval(correct, n),
            "acc_norm": correct_norm / n, "acc_norm_ci95": wilson_interval(correct_norm, n)}


def rate(rows: list[dict[str, Any]], key: str, among: str | None = None) -> dict[str, Any]:
    """The share of rows whose `key` is true (among those where `among` is true), with its Wilson interval."""
    counted = [row for row in rows if among is None or row[among]]
    hits = sum(bool(row[key]) for row in counted)
    return {key: hits / len(counted) if counted else None, f"{key}_ci95": wilson_interval(hits, len(counted)),
            f"{key}_n": len(counted)}


def percentile_interval(value: float, resampled: list[float]) -> Interval:
    """The central 95% of a bootstrap's resampled values, widened to hold `value`."""
    ordered = sorted(resampled)
    return enclosing(value, (ordered[len(ordered) // 40], ordered[len(ordered) - len(ordered) // 40 - 1]))


def bootstrap_mean(rows: list[dict[str, Any]], key: str, resamples: int = 1000) -> dict[str, Any]:
    """The mean of a per-row score in [0, 1], with a percentile bootstrap 95% interval (seed 0)."""
    values = [row[key] for row in rows]
    rng = random.Random(0)
    means = [sum(rng.choices(values, k=len(values))) / len(values) for _ in range(resamples)]
    mean = sum(values) / len(values)
    return {key: mean, f"{key}_ci95": percentile_interval(mean, means)}


def sacrebleu_interval(metric: Any, score: float, hypotheses: list[str], references: list[str],
                       resamples: int) -> Interval:
    """The 95% interval of a sacrebleu corpus score by sacrebleu's own bootstrap resampling (its resampler and
    seed; the interval is taken here because sacrebleu's summary of it fails on some inputs)."""
    from sacrebleu.significance import _bootstrap_resample

    _, resampled = _bootstrap_resample(metric._extract_corpus_statistics(hypotheses, [references]), metric,
                                       resamples)
    return percentile_interval(score, [float(sample.score) for sample in resampled])


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    """The harmonic mean of two shares; the one there is when the other is None."""
    if a is None or b is None:
        return a if b is None else b
    return 2 * a * b / (a + b) if a + b else 0.0


def harmonic_mean_interval(value: float | None, first: Interval, second: Interval) -> Interval:
    """The interval of a harmonic mean: the harmonic mean of the two intervals' bounds (it grows with both)."""
    bounds = tuple(harmonic_mean(one, other) or 0.0 for one, other in zip(first, second))
    return bounds if value is None else enclosing(value, bounds)
