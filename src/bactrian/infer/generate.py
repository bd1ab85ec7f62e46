"""`bactrian generate`: answer every instruction of a file with one or more adapters (or `auto`), by continuous
batching, writing JSONL rows as answers finish (so in finishing order; each row names its id and model).
Rerunning with the same output file resumes: rows already written are skipped, never repeated, and a last line
cut short by a crash is dropped before appending."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import ConfigError
from ..fileio import holds_output
from ..records import Instruction, parsing, read_instructions, read_jsonl
from .config import GenerateConfig
from .decoding import Request, SamplingParams
from .engine import Engine, build_engine
from .routing import AUTO, BASE

log = logging.getLogger(__name__)


def existing_keys(path: Path) -> set[tuple[str, str]]:
    """(id, model) of every complete row of a previous run; a torn last line is cut off."""
    if not path.exists():
        return set()
    _drop_torn_last_line(path)
    keys = set()
    for number, row in read_jsonl(path):
        with parsing(path, f"line {number}", "a row written by bactrian generate"):
            keys.add((str(row["id"]), str(row["model"])))
    return keys


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


@holds_output("output_file", "generate")
def generate(config: GenerateConfig, engine: Engine | None = None) -> int:
    """Answer every row not answered yet (with `engine`, or one built from the config); returns rows written."""
    if not config.input_file or not config.output_file:
        raise ConfigError("--input_file and --output_file are required.")
    sampling = {"temperature": 0.0, "top_p": 1.0, "top_k": 0}
    if config.num_beams > 1 and any(getattr(config, key) != value for key, value in sampling.items()):
        raise ConfigError("--num_beams above 1 searches beams and ignores --temperature, --top_p and --top_k; drop "
                          "them, or sample with --num_beams 1.")
    rows = read_instructions(Path(config.input_file))
    engine = engine or build_engine(config)
    models = config.adapter or ([AUTO] if engine.adapters else [BASE])
    for name in models:
        if name not in engine.model_names:
            raise ConfigError(f"--adapter {name}: not loaded. Loaded: {', '.join(engine.model_names)}.")
    output = Path(config.output_file)
    done = existing_keys(output)
    todo = [(number, row, model) for number, row in enumerate(rows) for model in models
            if (row.id, model) not in done]
    if done:
        log.info("%s: %d rows already written; %d to go.", output, len(done), len(todo))
    output.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="generate", unit="row", disable=not sys.stderr.isatty())
    with open(output, "a", encoding="utf-8") as handle:
        finished: list[dict[str, Any]] = []
        for row in answers(engine, config, todo):
            finished.append(row)
            bar.update(1)
            if len(finished) == config.batch_size:
                _append(handle, finished)
        _append(handle, finished)
    bar.close()
    return len(todo)


def _append(handle: Any, rows: list[dict[str, Any]]) -> None:
    """Write finished rows whole and durably (a crash loses at most the rows not yet written), then forget them."""
    handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    handle.flush()
    os.fsync(handle.fileno())
    rows.clear()


def answers(engine: Engine, config: GenerateConfig,
            todo: list[tuple[int, Instruction, str]]) -> Iterator[dict[str, Any]]:
    """The output row of each (row number, instruction, model) as its answer finishes: at most --batch_size are
    decoded at once, the next taking a finished one's place (continuous batching), so no slot waits for the
    longest answer of a batch."""
    used = ("num_beams", "max_new_tokens", "stop") if config.num_beams > 1 else (
        "temperature", "top_p", "top_k", "max_new_tokens", "stop")  # what decided the answer, nothing else
    settings = {key: getattr(config, key) for key in used}
    routes: dict[int, Any] = {}

    def requests() -> Iterator[Request]:
        for index, (number, row, model) in enumerate(todo):
            routes[index] = engine.resolve_adapter(model, f"{row.instruction}\n{row.input}")
            params = SamplingParams(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                                    max_new_tokens=config.max_new_tokens, stop=list(config.stop),
                                    seed=config.seed + number, num_beams=config.num_beams)
            yield Request(engine.render(routes[index].adapter, row.instruction, row.input), params,
                          routes[index].adapter)

    texts: dict[int, str] = {}
    for delta in engine.stream(requests(), max_rows=config.batch_size):
        texts[delta.index] = texts.get(delta.index, "") + delta.text
        if not delta.finish_reason:
            continue
        number, row, model = todo[delta.index]
        route = routes.pop(delta.index)
        yield {**asdict(row), "model": model, "adapter": route.adapter, "detected_lang": route.lang,
               "output": texts.pop(delta.index), "finish_reason": delta.finish_reason,
               "completion_tokens": delta.completion_tokens,
               "generation": {**settings, **({"seed": config.seed + number} if config.temperature > 0 else {})},
               **({"route": route.to_dict()} if model == AUTO else {})}
