"""`bactrian data build`: a recipe that runs translate, generate and filter and writes the dataset (one Parquet
file per language and a dataset card) that `datasets.load_dataset` and `bactrian finetune --data_path` read as
they are."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fileio import atomic_write_bytes, output_lock
from ..options import config_of, read_yaml, typed_values
from ..records import read_rows, write_parquet
from . import filters
from .config import DataGenerateConfig, FilterConfig, TranslateConfig
from .generate import generate
from .jobs import refuse_overlap
from .translate import translate

log = logging.getLogger(__name__)

RECIPE_KEYS = ("input", "output_dir", "lang", "translate", "generate", "filter")
SECTIONS = {"translate": TranslateConfig, "generate": DataGenerateConfig, "filter": FilterConfig}


def build(recipe_path: str) -> dict[str, Any]:
    recipe = _read_recipe(Path(recipe_path))
    out = Path(recipe["output_dir"])
    refuse_overlap(recipe["input"], str(out))
    stages = _stage_configs(recipe, recipe_path, out / "stages")  # every stage checked before the first request
    with output_lock(out, "data build"):
        return _run(recipe, stages, out)


def _run(recipe: dict[str, Any], stages: dict[str, Any], out: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if "translate" in stages:
        results["translate"] = translate(stages["translate"])
    results["generate"] = generate(stages["generate"])
    summary = filters.filter(stages["filter"])
    filtered = stages["filter"].output_dir
    kept = read_rows(filtered) if any(entry["kept"] for entry in summary.values()) else []
    counts = write_parquet(kept, out)
    write_card(out, recipe, counts, summary)
    return {"rows": counts, "filter": summary, **results}


def _read_recipe(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found.")
    recipe = read_yaml(path) or {}
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with keys {', '.join(RECIPE_KEYS)}.")
    if "langs" in recipe:  # the recipe key's name before options had one word for languages
        if "lang" in recipe:
            raise ConfigError(f"{path}: lang and langs name the same key; keep lang.")
        log.warning("%s: langs is deprecated: it is now lang.", path)
        recipe["lang"] = recipe.pop("langs")
    unknown = sorted(map(str, set(recipe) - set(RECIPE_KEYS)))
    if unknown:
        raise ConfigError(f"{path}: unknown recipe key(s) {', '.join(unknown)}; a recipe has {', '.join(RECIPE_KEYS)}.")
    missing = [key for key in ("input", "output_dir", "generate") if recipe.get(key) is None]
    if missing:
        raise ConfigError(f"{path}: recipe key(s) {', '.join(missing)} missing or empty.")
    for key in ("input", "output_dir"):
        if not isinstance(recipe[key], str):
            raise ConfigError(f"{path}: {key}: expected a path, got {recipe[key]!r}.")
    if "drop" in (recipe.get("filter") or {}):
        raise ConfigError(f"{path}: filter.drop: a build always drops the rows that fail a filter (the dataset "
                          "is what passed); run `bactrian data filter --drop False` to inspect failing rows.")
    return recipe


def _stage_configs(recipe: dict[str, Any], where: str, stages: Path) -> dict[str, Any]:
    """Each stage's config, its section's values type-checked, wired input to output."""
    fixed = {"translate": {"input": recipe["input"], "output_dir": str(stages / "translated")}}
    source = str(stages / "translated") if "translate" in recipe else recipe["input"]
    fixed["generate"] = {"input": source, "output_dir": str(stages / "generated")}
    fixed["filter"] = {"input": str(stages / "generated"), "output_dir": str(stages / "filtered"), "drop": True}
    if "lang" in recipe:
        fixed["translate"]["lang"] = typed_values(TranslateConfig, {"lang": recipe["lang"]}, where)["lang"]
    configs = {}
    for name, config_cls in SECTIONS.items():
        if name not in recipe and name != "filter":
            continue
        section = recipe.get(name) if name in recipe else {}
        if section is None:
            raise ConfigError(f"{where}: {name}: the section is empty; give its options or remove it.")
        configs[name] = config_of(config_cls, (section, f"{where}: {name}"), (fixed[name], f"{where}: {name}"))
    filters.check_settings(configs["filter"])
    return configs


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
