"""`bactrian data filter`: quality filters for generated data (wrong language, empty or truncated output,
refusals, exact and near duplicates by MinHash, length bounds). Each row gets the list of reasons it fails; a
report counts them."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fileio import atomic_write_bytes, atomic_write_json, holds_output
from ..langid import written_in
from ..records import write_by_language
from .config import FilterConfig
from .jobs import read_job_input

REFUSALS = re.compile("|".join([
    r"\bas an ai\b", r"\bi(?:'m| am) (?:sorry|unable|not able)\b", r"\bi can(?:'t|not) (?:help|assist|provide)\b",
    r"\ben tant qu'(?:ia|intelligence artificielle)\b", r"\bals (?:ki|künstliche intelligenz)\b",
    r"\bcomo (?:una )?(?:ia|inteligencia artificial)\b", r"作为一个?(?:人工智能|ai)", r"aiとして",
    r"\bкак (?:ии|искусственный интеллект)\b",
]), re.IGNORECASE)


@dataclass
class FilterSettings:
    min_chars: int = 1
    max_chars: int = 20000
    near_duplicate_threshold: float = 0.9  # Jaccard similarity of output shingles (MinHash estimate)


def reasons_for(row: dict[str, Any], settings: FilterSettings) -> list[str]:
    """The single-row checks (duplicates need the whole set: see `filter_rows`)."""
    output = (row.get("output") or "").strip()
    if not output:
        return ["empty"]
    reasons = []
    if row.get("finish_reason") == "length":
        reasons.append("truncated")
    if not settings.min_chars <= len(output) <= settings.max_chars:
        reasons.append("length")
    if REFUSALS.search(output):
        reasons.append("refusal")
    if not written_in(output, row["lang"]):
        reasons.append("wrong_language")
    return reasons


def _shingles(text: str, size: int = 5) -> set[str]:
    flat = " ".join(text.lower().split())
    return {flat[i:i + size] for i in range(max(1, len(flat) - size + 1))}


def filter_rows(rows: list[dict[str, Any]], settings: FilterSettings, num_proc: int = 1) -> list[list[str]]:
    """Reasons for every row, duplicates included: the first of a group of exact or near duplicates (per
    language, on instruction + input + output) is kept, the others are flagged. The per-row work (checks,
    language ID, MinHash signatures) runs on `num_proc` processes; only the duplicate index is sequential."""
    from datasketch import MinHashLSH

    checked = _check_rows(rows, settings, num_proc)
    reasons = [row_reasons for row_reasons, _, _ in checked]
    seen_exact: set[tuple[str, str]] = set()
    indexes: dict[str, Any] = defaultdict(lambda: MinHashLSH(threshold=settings.near_duplicate_threshold,
                                                             num_perm=MINHASH_PERMUTATIONS))
    for index, (row, (row_reasons, digest, signature)) in enumerate(zip(rows, checked)):
        if digest is None:
            continue
        if (row["lang"], digest) in seen_exact:
            row_reasons.append("duplicate")
            continue
        seen_exact.add((row["lang"], digest))
        if indexes[row["lang"]].query(signature):
            row_reasons.append("near_duplicate")
        else:
            indexes[row["lang"]].insert(str(index), signature)
    return reasons


MINHASH_PERMUTATIONS = 64
MAX_THRESHOLD = 0.96  # the highest threshold datasketch 2 can band 64 permutations for
CHUNK_ROWS = 2000


def _check_rows(rows: list[dict[str, Any]], settings: FilterSettings, num_proc: int) -> list[tuple]:
    chunks = [rows[start:start + CHUNK_ROWS] for start in range(0, len(rows), CHUNK_ROWS)]
    if num_proc <= 1 or len(chunks) <= 1:
        return [checked for chunk in chunks for checked in _check_chunk(chunk, settings)]
    with ProcessPoolExecutor(min(num_proc, len(chunks)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return [checked for part in pool.map(_check_chunk, chunks, [settings] * len(chunks)) for checked in part]


def _check_chunk(rows: list[dict[str, Any]], settings: FilterSettings) -> list[tuple]:
    """(reasons, digest, MinHash) of each row; no digest for an empty row (it cannot be a duplicate)."""
    from datasketch import MinHash

    checked = []
    for row in rows:
        reasons = reasons_for(row, settings)
        if "empty" in reasons:
            checked.append((reasons, None, None))
            continue
        text = f"{row.get('instruction', '')}\n{row.get('input', '')}\n{row.get('output', '')}"
        digest = hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()
        signature = MinHash(num_perm=MINHASH_PERMUTATIONS, seed=1)
        signature.update_batch([shingle.encode() for shingle in _shingles(text)])
        checked.append((reasons, digest, signature))
    return checked


def report(rows: list[dict[str, Any]], reasons: list[list[str]]) -> dict[str, Any]:
    per_lang: dict[str, dict[str, Any]] = {}
    for row, row_reasons in zip(rows, reasons):
        entry = per_lang.setdefault(row["lang"], {"total": 0, "kept": 0, "dropped": Counter()})
        entry["total"] += 1
        if row_reasons:
            entry["dropped"].update(row_reasons)
        else:
            entry["kept"] += 1
    return {lang: {**entry, "dropped": dict(entry["dropped"])} for lang, entry in sorted(per_lang.items())}


def report_markdown(summary: dict[str, Any]) -> str:
    reasons = sorted({reason for entry in summary.values() for reason in entry["dropped"]})
    lines = ["| language | rows | kept | " + " | ".join(reasons) + " |",
             "| --- | ---: | ---: |" + " ---: |" * len(reasons)]
    for lang, entry in summary.items():
        cells = [str(entry["dropped"].get(reason, 0)) for reason in reasons]
        lines.append(f"| {lang} | {entry['total']} | {entry['kept']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_settings(config: FilterConfig) -> None:
    """Settings errors, raised before any row is read (a build checks them before its first request)."""
    from datasketch import MinHashLSH

    if config.min_chars > config.max_chars:
        raise ConfigError(f"min_chars {config.min_chars} is above max_chars {config.max_chars}.")
    problem = None if 0 <= config.near_duplicate_threshold <= MAX_THRESHOLD else "above what its bands can resolve"
    try:
        MinHashLSH(threshold=config.near_duplicate_threshold, num_perm=MINHASH_PERMUTATIONS)
    except ValueError as exc:
        problem = str(exc)
    if problem:  # datasketch 2 raises at construction; 1.x accepted such thresholds
        raise ConfigError(f"near_duplicate_threshold {config.near_duplicate_threshold}: MinHash with "
                          f"{MINHASH_PERMUTATIONS} permutations cannot use it ({problem}); choose a value from 0 to "
                          f"{MAX_THRESHOLD}.")


@holds_output("output_dir", "data filter")
def filter(config: FilterConfig) -> dict[str, Any]:
    """`bactrian data filter` (named after its verb like every entry point; it shadows the builtin here only)."""
    check_settings(config)
    rows = read_job_input(config.input, config.output_dir)
    settings = FilterSettings(config.min_chars, config.max_chars, config.near_duplicate_threshold)
    reasons = filter_rows(rows, settings, config.num_proc or len(os.sched_getaffinity(0)))
    kept = [row if config.drop else {**row, "filter_reasons": why} for row, why in zip(rows, reasons)
            if not (config.drop and why)]
    out = Path(config.output_dir)
    write_by_language(out, kept)
    summary = report(rows, reasons)
    atomic_write_json(out / "filter_report.json", summary)
    atomic_write_bytes(out / "filter_report.md", report_markdown(summary).encode("utf-8"))
    return summary
