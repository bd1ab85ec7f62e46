"""`bactrian eval`: zero-shot multiple choice by log-likelihood, every model (the base and each adapter) on the
same items, sharing one loaded base model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .. import __version__, languages
from ..errors import ConfigError
from ..infer.engine import build_engine
from ..infer.routing import BASE
from ..manifest import public_config
from .config import EvalConfig
from .report import summarise, write_reports
from .scoring import loglikelihoods
from .tasks import Item, load_task

log = logging.getLogger(__name__)


def predictions(items: list[Item], scores: list[list[float]]) -> list[dict[str, Any]]:
    rows = []
    for item, lls in zip(items, scores):
        normalised = [ll / max(1, len(text)) for ll, text in zip(lls, item.choice_texts)]
        rows.append({"id": item.id, "lang": item.lang, "label": item.label, "loglikelihoods": lls,
                     "pred": max(range(len(lls)), key=lls.__getitem__),
                     "pred_norm": max(range(len(lls)), key=normalised.__getitem__)})
    return rows


def evaluate(config: EvalConfig) -> dict[str, Any]:
    if config.prompt_template_name != EvalConfig.prompt_template_name:
        raise ConfigError("--prompt_template_name: eval scores each task's own prompts (as lm-evaluation-harness "
                          "does), so no template is used; drop the option.")
    langs = languages.parse_langs(config.langs)
    tasks = {task: load_task(task, config.data_dir, langs) for task in config.tasks}
    if config.limit:
        tasks = {task: {lang: items[: config.limit] for lang, items in per_lang.items()}
                 for task, per_lang in tasks.items()}
    engine = build_engine(config)
    models = [BASE, *engine.adapters]
    results: dict[str, Any] = {"bactrian_version": __version__, "config": public_config(config), "models": models,
                               "tasks": {}, "examples": {}}
    for task, per_lang in tasks.items():
        results["tasks"][task], results["examples"][task] = {}, {}
        all_items = [item for items in per_lang.values() for item in items]
        for name in models:
            with engine.using(name) as model:
                scores = loglikelihoods(model, engine.tokenizer, all_items, config.batch_size)
            rows = predictions(all_items, scores)
            results["examples"][task][name] = rows
            results["tasks"][task][name] = {lang: summarise([r for r in rows if r["lang"] == lang])
                                            for lang in per_lang}
            log.info("%s / %s: %s", task, name, {lang: round(s["acc"], 3)
                                                  for lang, s in results["tasks"][task][name].items()})
    write_reports(results, Path(config.output_dir))
    return results
