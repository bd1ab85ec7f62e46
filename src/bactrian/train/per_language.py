"""--per_language: one adapter per language into OUTPUT_DIR/<lang>/, each its own finetune run (its own output
folder, checkpoints and run identity), and the table of their metrics that the CLI prints."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .. import languages
from ..errors import ConfigError
from ..fileio import atomic_write_json, output_lock
from ..manifest import read_manifest
from ..models import free_memory, load_tokenizer, resolve
from ..prompts import load_template
from .checkpoints import list_checkpoints
from .config import FinetuneConfig
from .distributed import DistributedContext
from .run_identity import identity_differences, run_identity, saved_identity
from .token_cache import tokenized_rows

log = logging.getLogger(__name__)


def finetune_per_language(config: FinetuneConfig,
                          finetune_one: Callable[[FinetuneConfig], dict[str, Any]]) -> dict[str, Any]:
    """One adapter per language, each trained by `finetune_one` (one run of finetune). Finished languages (with
    a manifest) are skipped and an interrupted one resumes from its last checkpoint, so rerunning the same
    command continues the set."""
    if config.resume_from_checkpoint not in (None, "auto"):
        raise ConfigError("--per_language resumes each language from its own checkpoints (auto); a single "
                          f"--resume_from_checkpoint {config.resume_from_checkpoint} cannot serve every language.")
    langs = languages.parse_langs(config.lang) or _languages_in_data(config)
    root = Path(config.output_dir)
    results: dict[str, Any] = {}
    for lang in langs:
        folder = root / lang
        one = dataclasses.replace(config, lang=[lang], output_dir=str(folder), per_language=False,
                                  resume_from_checkpoint=config.resume_from_checkpoint or "auto")
        finished = _finished_run(folder, run_identity(one))
        if finished is not None:
            log.info("%s: already trained, skipped (same settings and data).", folder)
            results[lang] = finished
            continue
        with output_lock(folder, "finetune --per_language") if DistributedContext.from_env().is_main else nullcontext():
            results[lang] = finetune_one(one)
        free_memory()  # this language's model and optimizer, before the next one loads
    if DistributedContext.from_env().is_main:
        atomic_write_json(root / "summary.json", {"languages": results})
    return {"languages": results}


def _languages_in_data(config: FinetuneConfig) -> list[str]:
    """Every language of the data, read from the token cache (built now if need be, for all the runs to share)."""
    tokenizer = load_tokenizer(resolve(config.base_model).path)
    template = load_template(config.prompt_template_name)
    return tokenized_rows(config, tokenizer, template, DistributedContext.from_env()).languages()


def _finished_run(folder: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of the adapter in `folder` if it was trained by this very run; a folder left by another run
    (other settings or data) is cleared, saying what differs, so the language is trained again."""
    manifest = read_manifest(folder)
    if manifest is not None and "run" not in manifest:
        log.info("%s: trained by an earlier bactrian that recorded no run identity; kept as it is.", folder)
        return manifest["metrics"]
    checkpoints = list_checkpoints(folder)
    saved = (manifest or {}).get("run") or (saved_identity(checkpoints[-1]) if checkpoints else None)
    if saved is None:
        return None
    differences = identity_differences(saved, identity)
    if differences:
        log.warning("%s: trained by another run (%s); training it again.", folder, "; ".join(differences))
        shutil.rmtree(folder)
        return None
    return manifest["metrics"] if manifest else None


def summary_table(results: dict[str, Any]) -> str:
    """One line per language: its eval loss at the end and at the start, train loss and steps."""
    lines = [f"{'lang':<6} {'eval loss':>10} {'at start':>10} {'train loss':>11} {'steps':>6}"]
    for lang, metrics in results.items():
        lines.append(f"{lang:<6} {_number(metrics.get('eval_loss')):>10} "
                     f"{_number(metrics.get('eval_loss_at_start')):>10} "
                     f"{_number(metrics.get('train_loss')):>11} {metrics.get('steps', '-'):>6}")
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"
