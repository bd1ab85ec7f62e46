"""`bactrian data build`: a recipe that runs translate, generate and filter and writes the dataset (one Parquet
file per language and a dataset card) that `datasets.load_dataset` and `bactrian finetune --data_path` read as
they are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..fileio import atomic_write_bytes, atomic_write_with
from ..records import read_rows
from . import filters
from .generate import DataGenerateConfig, generate
from .jobs import remove_other_languages
from .translate import TranslateConfig, translate

DATASET_COLUMNS = ("id", "lang", "instruction", "input", "output")


def build(recipe_path: str) -> dict[str, Any]:
    recipe = _read_recipe(Path(recipe_path))
    if "drop" in recipe.get("filter", {}):
        raise ConfigError(f"{recipe_path}: filter.drop: a build always drops the rows that fail a filter (the dataset "
                          "is what passed); run `bactrian data filter --drop False` to inspect failing rows.")
    out = Path(recipe["output_dir"])
    stages = out / "stages"
    source = recipe["input"]
    results: dict[str, Any] = {}
    if "translate" in recipe:
        results["translate"] = translate(_stage(TranslateConfig, recipe["translate"], input=source,
                                                langs=recipe.get("langs", ["all"]),
                                                output_dir=str(stages / "translated")))
        source = str(stages / "translated")
    results["generate"] = generate(_stage(DataGenerateConfig, recipe["generate"], input=source,
                                          output_dir=str(stages / "generated")))
    summary = filters.filter(_stage(filters.FilterConfig, recipe.get("filter", {}), input=str(stages / "generated"),
                                    output_dir=str(stages / "filtered"), drop=True))
    kept = read_rows(str(stages / "filtered")) if any(entry["kept"] for entry in summary.values()) else []
    counts = write_parquet(kept, out)
    write_card(out, recipe, counts, summary)
    return {"rows": counts, "filter": summary, **results}


def _read_recipe(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found.")
    recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    missing = [key for key in ("input", "output_dir", "generate") if key not in recipe]
    if missing:
        raise ConfigError(f"{path}: recipe key(s) {', '.join(missing)} missing.")
    return recipe


def _stage(config_cls: type, section: dict[str, Any], **fixed: Any) -> Any:
    known = {field.name for field in dataclasses.fields(config_cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"recipe section for {config_cls.__name__}: unknown key(s) {', '.join(unknown)}.")
    return config_cls(**{**section, **fixed})


def write_parquet(rows: list[dict[str, Any]], out: Path, first: tuple[str, ...] = DATASET_COLUMNS) -> dict[str, int]:
    """One Parquet file per language: the dataset columns (`first`), then every provenance column the rows
    carry."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    for lang in sorted({row["lang"] for row in rows}):
        lang_rows = [row for row in rows if row["lang"] == lang]
        extra = sorted({key for row in lang_rows for key in row} - set(first) - {"filter_reasons"})
        columns = {key: [_text(row.get(key)) for row in lang_rows] for key in (*first, *extra)}
        atomic_write_with(out / f"{lang}.parquet", lambda tmp, table=pa.table(columns): pq.write_table(table, tmp))
        counts[lang] = len(lang_rows)
    remove_other_languages(out, set(counts), ".parquet")
    return counts


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def write_card(out: Path, recipe: dict[str, Any], counts: dict[str, int], summary: dict[str, Any]) -> None:
    configs = "\n".join(f"- config_name: {lang}\n  data_files:\n  - split: train\n    path: {lang}.parquet"
                        for lang in counts)
    rows = "\n".join(f"| {lang} | {count} | {summary.get(lang, {}).get('total', count)} |"
                     for lang, count in counts.items())
    card = f"""---
configs:
{configs}
language:
{chr(10).join(f"- {lang}" for lang in counts)}
---
# Multilingual instruction data built with bactrian

Translated with `{recipe.get('translate', {}).get('model', '-')}`, answered by `{recipe['generate'].get('model')}`,
then filtered (wrong language, empty or truncated outputs, refusals, duplicates, length). Columns: id, lang,
instruction, input, output, then provenance.

| language | rows kept | rows generated |
| --- | ---: | ---: |
{rows}

Load one language with `datasets.load_dataset("path/to/this/folder", "fr")`, or train on all of it with
`bactrian finetune --data_path path/to/this/folder`.
"""
    atomic_write_bytes(out / "README.md", card.encode("utf-8"))
