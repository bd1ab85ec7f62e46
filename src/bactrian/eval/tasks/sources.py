"""Where tasks read their data: the files the datasets are published in, found anywhere below --data_dir, or else
the hub dataset; and the fields of a row, a missing one named by file and place."""

from __future__ import annotations

import csv
from pathlib import Path

from ...errors import DataError
from ...records import read_jsonl


def find_file(root: Path | None, task: str, patterns: list[str]) -> Path | None:
    """The first file matching the first pattern that matches any: in `root`, in `root/<task>` or below it."""
    if root is None:
        return None
    for pattern in patterns:
        found = sorted(root.glob(pattern)) + sorted(root.glob(f"{task}/{pattern}")) + \
            sorted(root.glob(f"{task}/**/{pattern}"))
        if found:
            return found[0]
    return None


def files_below(root: Path | None, pattern: str) -> list[Path]:
    """Every file matching `pattern` anywhere below `root`, sorted."""
    return sorted(root.rglob(pattern)) if root is not None else []


def hub_rows(dataset: str, config: str | None, split: str) -> list[dict]:
    """The rows of a hub dataset's config and split (what a task reads when --data_dir has no file for it)."""
    import datasets

    try:
        return list(datasets.load_dataset(dataset, config, split=split))
    except Exception as exc:  # network, auth, missing config: one clear message
        raise DataError(f"No local file under --data_dir for {dataset} {config or ''} and the hub dataset could "
                        f"not be loaded ({exc}).") from exc


def jsonl_rows(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path)]


def tsv_rows(path: Path) -> list[dict]:
    """The rows of a TSV file with a header."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def field(row: dict, name: str, source: object, where: str) -> object:
    """`row[name]`, or a DataError naming the file and the row when it is missing."""
    if name not in row or row[name] is None:
        raise DataError(f"{source}: {where}: field '{name}' is missing.")
    return row[name]
