"""`bactrian generate`: answer every instruction of a file with one or more adapters (or `auto`), by continuous
batching, writing JSONL rows as answers finish (so in finishing order; each row names its id and model).
Rerunning with the same output file resumes (`answers.answer_prompts`): rows already written are skipped, never
repeated, and a last line cut short by a crash is dropped before appending."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import ConfigError
from ..fileio import holds_output
from ..records import read_instructions
from .answers import answer_prompts
from .config import GenerateConfig
from .engine import Engine, build_engine
from .requests import SamplingParams
from .routing import AUTO, BASE


def sampling_of(config: GenerateConfig) -> SamplingParams:
    return SamplingParams(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                          num_beams=config.num_beams, max_new_tokens=config.max_new_tokens, stop=list(config.stop),
                          seed=config.seed)


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
    models = config.adapter or ([AUTO] if engine.catalog.adapters else [BASE])
    for name in models:
        engine.catalog.check_loaded(name, "--adapter")
    bar = tqdm(desc="generate", unit="row", disable=not sys.stderr.isatty())
    with bar:
        return answer_prompts(engine, rows, models, sampling_of(config), Path(config.output_file),
                              config.decode_batch_size, on_answer=lambda: bar.update(1),
                              language_guard=config.language_guard, guard_retries=config.guard_retries)
