"""`bactrian data generate --engine openai`: the teacher answers every row in the row's language, through any
OpenAI-compatible endpoint (async, cached, rate-limited, retried)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import languages
from ..fileio import holds_output
from ..options import option
from ..records import write_by_language
from .jobs import REMOTE_ONLY, EndpointConfig, make_client, read_job_input, refuse_unused, run_chats


@dataclass
class DataGenerateConfig(EndpointConfig):
    input: str = option("", "Rows to answer (instruction, input, lang): a file or a folder of per-language files.")
    engine: str = option("openai", "Teacher engine: openai (any OpenAI-compatible endpoint) or hf (a local "
                                   "model named by --model, in batches).", choices=("openai", "hf"))
    batch_size: int = option(8, "Rows answered together by --engine hf.")
    max_tokens: int = option(1024, "Most tokens per answer; answers cut there are marked finish_reason=length.")


def answer_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    name = languages.get(row["lang"]).name
    question = f"{row['instruction']}\n\n{row['input']}" if row.get("input") else row["instruction"]
    return [{"role": "system", "content": f"You are a helpful assistant. Always answer in {name}, the language of "
                                          "the question."},
            {"role": "user", "content": question}]


@holds_output("output_dir", "data generate")
def generate(config: DataGenerateConfig) -> dict[str, Any]:
    refuse_unused(config, REMOTE_ONLY if config.engine == "hf" else ("batch_size",))
    rows = read_job_input(config.input, config.output_dir)
    conversations = [answer_messages(row) for row in rows]
    if config.engine == "hf":
        from .jobs import request_cache
        from .local import generate_locally

        replies = generate_locally(config.model, conversations, request_cache(config), config.batch_size,
                                   config.max_tokens)
        usage = {"generated": len(replies)}
    else:
        client = make_client(config)
        replies = run_chats(client, config, conversations, config.max_tokens, "generate")
        if isinstance(replies, dict):  # --dry_run or --batch_file
            return replies
        usage = vars(client.usage)
    out_rows = [{**row, "output": reply["content"].strip(), "finish_reason": reply["finish_reason"],
                 "generate_engine": config.engine, "generate_model": config.model,
                 "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                for row, reply in zip(rows, replies) if reply is not None]
    counts = write_by_language(Path(config.output_dir), out_rows)
    return {"rows": counts, "failed": len(rows) - len(out_rows), "usage": usage}
