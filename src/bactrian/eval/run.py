"""`bactrian eval`: every model (the base and each adapter) on the same items, sharing one loaded base model.
Multiple-choice tasks are scored by log-likelihood; generative tasks are answered through the engine in batches
(answers are kept in the output folder, so a rerun reuses them), then scored per answer and per language."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .. import __version__, languages
from ..errors import ConfigError
from ..fileio import holds_output
from ..infer import answers as answering
from ..infer.engine import Engine, build_engine
from ..infer.requests import SamplingParams
from ..infer.routing import BASE
from ..manifest import public_config
from ..records import Instruction
from .config import EvalConfig
from .report import write_reports
from .scoring import loglikelihoods
from .statistics import summarise
from .tasks.base import GenerativeTask, Item, Prompt
from .tasks.registry import get_task

log = logging.getLogger(__name__)


def predictions(items: list[Item], scores: list[list[float]]) -> list[dict[str, Any]]:
    rows = []
    for item, lls in zip(items, scores):
        normalised = [ll / max(1, len(text)) for ll, text in zip(lls, item.choice_texts)]
        rows.append({"id": item.id, "lang": item.lang, "label": item.label, "loglikelihoods": lls,
                     "pred": max(range(len(lls)), key=lls.__getitem__),
                     "pred_norm": max(range(len(lls)), key=normalised.__getitem__)})
    return rows


def _first(prompts: list[Prompt], limit: int) -> list[Prompt]:
    """The first `limit` prompts of each group (language or direction)."""
    seen: dict[str, int] = {}
    kept = []
    for prompt in prompts:
        seen[prompt.group] = seen.get(prompt.group, 0) + 1
        if not limit or seen[prompt.group] <= limit:
            kept.append(prompt)
    return kept


@holds_output("output_dir", "eval")
def evaluate(config: EvalConfig) -> dict[str, Any]:
    generative = [task for task in config.tasks if isinstance(get_task(task), GenerativeTask)]
    if not generative and config.prompt_template_name != EvalConfig.prompt_template_name:
        raise ConfigError("--prompt_template_name: multiple-choice tasks score each task's own prompts (as "
                          "lm-evaluation-harness does), so no template is used; drop the option.")
    langs = languages.parse_langs(config.lang)
    root = Path(config.data_dir) if config.data_dir else None
    multiple_choice = {task: get_task(task).load(root, langs) for task in config.tasks if task not in generative}
    if config.limit:
        multiple_choice = {task: {lang: items[: config.limit] for lang, items in per_lang.items()}
                           for task, per_lang in multiple_choice.items()}
    prompts = {task: _first(get_task(task).read(root, langs, config.confusion_prompts), config.limit)
               for task in generative}
    engine = build_engine(config)
    models = [BASE, *engine.catalog.adapters]
    results: dict[str, Any] = {"bactrian_version": __version__, "config": public_config(config), "models": models,
                               "tasks": {}, "examples": {}, "metrics": {}, "notes": {}}
    for task, per_lang in multiple_choice.items():
        results["tasks"][task], results["examples"][task] = _multiple_choice(engine, config, models, per_lang)
    for task in generative:
        results["tasks"][task], results["examples"][task] = _generated(engine, config, models, get_task(task),
                                                                       prompts[task])
        results["metrics"][task] = [[m.key, m.label, m.scale] for m in get_task(task).metrics]
        results["notes"][task] = get_task(task).notes
    write_reports(results, Path(config.output_dir))
    return results


def _multiple_choice(engine: Engine, config: EvalConfig, models: list[str],
                     per_lang: dict[str, list[Item]]) -> tuple[dict, dict]:
    summaries, examples = {}, {}
    all_items = [item for items in per_lang.values() for item in items]
    for name in models:
        with engine.using(name) as model:
            scores = loglikelihoods(model, engine.tokenizer, all_items, config.score_batch_size)
        rows = predictions(all_items, scores)
        examples[name] = rows
        summaries[name] = {lang: summarise([r for r in rows if r["lang"] == lang]) for lang in per_lang}
        log.info("%s: %s", name, {lang: round(s["acc"], 3) for lang, s in summaries[name].items()})
    return summaries, examples


def _generated(engine: Engine, config: EvalConfig, models: list[str], task: GenerativeTask,
               prompts: list[Prompt]) -> tuple[dict, dict]:
    """Each model's answer to each prompt (reusing the answers a previous run wrote), scored."""
    answers = answer_prompts(engine, config, task, prompts, models)
    summaries, examples = {}, {}
    for name in models:
        rows = []
        for prompt in prompts:
            answer = answers[(prompt.id, name)]
            rows.append({"id": prompt.id, "lang": prompt.lang, "group": prompt.group, "answer": answer["output"],
                         "finish_reason": answer["finish_reason"], **task.score(prompt, answer["output"]),
                         **({"guard": answer["guard"]} if "guard" in answer else {})})
        examples[name] = rows
        groups = dict.fromkeys(prompt.group for prompt in prompts)
        summaries[name] = {group: _summary(task, [row for row in rows if row["group"] == group]) for group in groups}
        main = task.metrics[0].key
        log.info("%s / %s %s: %s", task.name, name, main, {group: s[main] for group, s in summaries[name].items()})
    return summaries, examples


def _summary(task: GenerativeTask, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The task's summary of a group's rows, and what the language guard did there when it was on."""
    summary = task.summarise(rows)
    guarded = [row["guard"] for row in rows if "guard" in row]
    if guarded:
        summary["guard"] = {"answers": len(guarded),
                            "answers_retried": sum(bool(report.get("retries")) for report in guarded),
                            "retries_per_answer": sum(report.get("retries", 0) for report in guarded) / len(guarded),
                            "pieces_unfixed": sum(report.get("unfixed", 0) for report in guarded)}
    return summary


def answer_prompts(engine: Engine, config: EvalConfig, task: GenerativeTask, prompts: list[Prompt],
                   models: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Answers by (prompt id, model), greedy, resumed from the task's answers file: one pass per set of stop
    strings (MGSM's are per language; other tasks have one set)."""
    answers_file = Path(config.output_dir) / "answers" / f"{task.name}.jsonl"
    by_stops: dict[tuple[str, ...], list[Prompt]] = {}
    for prompt in prompts:
        by_stops.setdefault(tuple(task.stop(prompt.lang)), []).append(prompt)
    for stops, group in by_stops.items():
        params = SamplingParams(max_new_tokens=config.max_new_tokens or task.max_new_tokens, stop=list(stops))
        instructions = [Instruction(p.id, p.lang, p.instruction, p.input) for p in group]
        answering.answer_prompts(engine, instructions, models, params, answers_file, config.decode_batch_size,
                                 language_guard=config.language_guard, guard_retries=config.guard_retries)
    return answering.read_answers(answers_file)
