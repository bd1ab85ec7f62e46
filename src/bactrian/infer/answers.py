"""Answer these prompts with these models: the one resumable way to get a loaded engine's answers, used by
`generate`, `eval`, `eval judge` and `data prefs` alike.

Answers are appended to a JSONL file as they finish (continuous batching, so in finishing order), each row whole
and durable; a rerun with the same file answers only what is missing (a last line cut short by a crash is dropped
first), and refuses answers made with other decoding settings rather than mixing them."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .. import languages
from ..errors import ConfigError
from ..records import Instruction, parsing, read_jsonl
from .requests import GUARD_RETRIES, LanguageGuard, Request, SamplingParams
from .routing import AUTO, guard_for

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (prompt id, model)


def recorded(params: SamplingParams, guard_retries: int | None = None) -> dict[str, Any]:
    """The settings that decide an answer, as its row records them (`generation`; the seed apart): the sampling
    settings, and the language guard's retries when it was on."""
    used = ("num_beams", "max_new_tokens", "stop") if params.num_beams > 1 else (
        "temperature", "top_p", "top_k", "max_new_tokens", "stop")
    settings = {key: list(value) if key == "stop" else value for key, value in asdict(params).items() if key in used}
    return settings if guard_retries is None else {**settings, "language_guard_retries": guard_retries}


def for_prompt(params: SamplingParams, number: int) -> SamplingParams:
    """Prompt number n samples with seed + n, so that its answer does not depend on its batch."""
    return replace(params, seed=(params.seed or 0) + number, stop=list(params.stop))


def sampled(params: SamplingParams) -> bool:
    return params.num_beams == 1 and not params.greedy


def answer_prompts(engine: Any, prompts: Sequence[Instruction], models: Sequence[str], params: SamplingParams,
                   answers_file: Path, decode_batch_size: int = 8,
                   on_answer: Callable[[], None] | None = None, language_guard: bool = False,
                   guard_retries: int = GUARD_RETRIES) -> int:
    """Answer each prompt with each model (an adapter, `base` or `auto`) of `engine` (an `engine.Engine`) into
    `answers_file`, skipping the pairs it already holds; returns how many were answered now. At most
    `decode_batch_size` answers decode at once, the next prompt taking a finished one's place; `on_answer` is
    called as each is written. With `language_guard`, each answer is kept in its prompt's language (`lang`, else
    the language told from the prompt, as `auto` tells it) and its row carries the guard's report (`guard`).
    `read_answers` reads them back."""
    for name in models:
        engine.catalog.check_loaded(name, "model")
    if language_guard and params.num_beams > 1:
        raise ConfigError("the language guard checks answers as they are decoded; beam search decodes them whole. "
                          "Use --num_beams 1 with --language_guard.")
    retries = guard_retries if language_guard else None
    answers_file = Path(answers_file)
    wanted = [(number, prompt, model) for number, prompt in enumerate(prompts) for model in models]
    done = _answered(answers_file, {(prompt.id, model) for _, prompt, model in wanted}, recorded(params, retries))
    todo = [item for item in wanted if (item[1].id, item[2]) not in done]
    if done and todo:
        log.info("%s: %d answers already written; %d to go.", answers_file, len(done), len(todo))
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    with open(answers_file, "a", encoding="utf-8") as handle:
        finished: list[dict[str, Any]] = []
        for row in _decoded(engine, params, todo, decode_batch_size, retries):
            finished.append(row)
            if on_answer:
                on_answer()
            if len(finished) == decode_batch_size:
                _append(handle, finished)
        _append(handle, finished)
    return len(todo)


def read_answers(path: Path) -> dict[Key, dict[str, Any]]:
    """Every complete answer row of `path` by (prompt id, model)."""
    return {key: row for key, row in _rows(path)}


def _rows(path: Path) -> Iterator[tuple[Key, dict[str, Any]]]:
    if not path.exists():
        return
    _drop_torn_last_line(path)
    for number, row in read_jsonl(path):
        with parsing(path, f"line {number}", "a row of answers written by bactrian"):
            yield (str(row["id"]), str(row["model"])), row


def _answered(path: Path, wanted: set[Key], expected: dict[str, Any]) -> set[Key]:
    """The wanted pairs `path` already answers (a torn last line is cut off first); a ConfigError if any says it
    was decoded with other settings than `expected` (the seed aside: it follows the prompt's number)."""
    done = set()
    for key, row in _rows(path):
        if key not in wanted:
            continue
        made = {name: value for name, value in row.get("generation", expected).items() if name != "seed"}
        if made != expected:
            raise ConfigError(f"{path}: answers were generated with other settings ({made}, now {expected}); use "
                              "another output file (or --output_dir), or delete that file to answer again.")
        done.add(key)
    return done


def _drop_torn_last_line(path: Path, block: int = 1 << 16) -> None:
    """Cut a last line without its newline (a run killed while writing it), reading only the file's tail."""
    with open(path, "r+b") as handle:
        size = handle.seek(0, 2)
        end = size
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                complete = start + newline + 1
                break
            end = start
        else:
            complete = 0
        if complete != size:
            log.warning("%s: dropping an incomplete last line left by an interrupted run.", path)
            handle.truncate(complete)


def _append(handle: Any, rows: list[dict[str, Any]]) -> None:
    """Write finished rows whole and durably (a crash loses at most the rows not yet written), then forget them."""
    handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    handle.flush()
    os.fsync(handle.fileno())
    rows.clear()


def _decoded(engine: Any, params: SamplingParams, todo: list[tuple[int, Instruction, str]],
             decode_batch_size: int, guard_retries: int | None) -> Iterator[dict[str, Any]]:
    """The answer row of each (prompt number, prompt, model) as it finishes."""
    catalog, routes = engine.catalog, {}

    def requests() -> Iterator[Request]:
        for index, (number, prompt, model) in enumerate(todo):
            routes[index] = catalog.resolve_adapter(model, f"{prompt.instruction}\n{prompt.input}")
            yield Request(catalog.render(routes[index].adapter, prompt.instruction, prompt.input),
                          for_prompt(params, number), routes[index].adapter, guard=_guard(prompt, guard_retries))

    texts: dict[int, str] = {}
    for delta in engine.stream(requests(), max_rows=decode_batch_size):
        texts[delta.index] = texts.get(delta.index, "") + delta.text
        if not delta.finish_reason:
            continue
        number, prompt, model = todo[delta.index]
        route = routes.pop(delta.index)
        seed = {"seed": (params.seed or 0) + number} if sampled(params) else {}
        yield {**asdict(prompt), "model": model, "adapter": route.adapter, "detected_lang": route.lang,
               "output": texts.pop(delta.index), "finish_reason": delta.finish_reason,
               "completion_tokens": delta.completion_tokens, "generation": {**recorded(params, guard_retries), **seed},
               **({"route": route.to_dict()} if model == AUTO else {}),
               **({"guard": delta.guard or {"lang": None, "skipped": "language not detected"}}
                  if guard_retries is not None else {})}


def _guard(prompt: Instruction, retries: int | None) -> LanguageGuard | None:
    """The guard of a prompt's answer: in the prompt's `lang`, else the language told from its text (none told:
    no guard)."""
    if retries is None:
        return None
    lang = languages.get(prompt.lang).code if prompt.lang and languages.is_known(prompt.lang) else None
    return guard_for([f"{prompt.instruction}\n{prompt.input}"], retries, lang)
