"""`bactrian data generate --engine openai`: the teacher answers every row in the row's language, through any
OpenAI-compatible endpoint (async, cached, rate-limited, retried)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .. import languages
from ..fileio import holds_output
from ..records import write_by_language
from .config import DataGenerateConfig
from .jobs import REMOTE_ONLY, make_client, read_job_input, refuse_unused, run_chats


def answer_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    name = languages.get(row["lang"]).name
    question = f"{row['instruction']}\n\n{row['input']}" if row.get("input") else row["instruction"]
    return [{"role": "system", "content": f"You are a helpful assistant. Always answer in {name}, the language of "
                                          "the question."},
            {"role": "user", "content": question}]


@holds_output("output_dir", "data generate")
def generate(config: DataGenerateConfig) -> dict[str, Any]:
    refuse_unused(config, REMOTE_ONLY if config.engine == "hf" else ("decode_batch_size",))
    rows = read_job_input(config.input, config.output_dir)
    conversations = [answer_messages(row) for row in rows]
    if config.engine == "hf":
        from .jobs import request_cache
        from .local import generate_locally

        replies = generate_locally(config.model, conversations, request_cache(config),
                                   config.decode_batch_size, config.max_new_tokens)
        usage = {"generated": len(replies)}
    else:
        client = make_client(config)
        replies = run_chats(client, config, conversations, config.max_new_tokens, "generate")
        if isinstance(replies, dict):  # --dry_run or --batch_file
            return replies
        usage = vars(client.usage)
    out_rows = [{**row, "output": reply["content"].strip(), "finish_reason": reply["finish_reason"],
                 "generate_engine": config.engine, "generate_model": config.model,
                 "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                for row, reply in zip(rows, replies) if reply is not None]
    counts = write_by_language(Path(config.output_dir), out_rows)
    return {"rows": counts, "failed": len(rows) - len(out_rows), "usage": usage}
