"""`bactrian data translate --engine llm`: instruction and input (and output with --translate_output) into each
target language through any OpenAI-compatible chat endpoint. Code blocks, inline code, URLs and {{placeholders}}
are swapped for markers before translation and put back after; programming instructions (keyword rule, as the
paper) are kept in English or skipped."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import languages
from ..errors import ConfigError
from ..records import read_rows
from ..train.config import option
from .jobs import EndpointConfig, client_params, dry_run_report, make_client, run_all, write_by_language

PROTECTED = re.compile(r"```.*?```|`[^`\n]+`|https?://\S+|\{\{[^}]*\}\}", re.DOTALL)
CODE_KEYWORDS = re.compile(r"\b(code|program|programming|function|python|java|javascript|c\+\+|sql|html|css|"
                           r"regex|algorithm|script|compile|debug|api)\b", re.IGNORECASE)
MARKER = "⟦{}⟧"


@dataclass
class TranslateConfig(EndpointConfig):
    input: str = option("", "English rows: a JSON/JSONL/Parquet file or a folder of them.")
    langs: list[str] = option(["all"], "Target languages, comma separated, or all.")
    engine: str = option("llm", "Translation engine (this release: llm, any OpenAI-compatible chat model).",
                         choices=("llm",))
    translate_output: bool = option(False, "Translate the output too (the paper regenerated it instead).")
    code_instructions: str = option("keep", "Programming instructions: keep them in English, or skip them.",
                                    choices=("keep", "skip"))
    max_tokens: int = option(1024, "Most tokens per translation.")


def protect(text: str) -> tuple[str, list[str]]:
    spans: list[str] = []

    def swap(match: re.Match) -> str:
        spans.append(match.group(0))
        return MARKER.format(len(spans) - 1)

    return PROTECTED.sub(swap, text), spans


def restore(text: str, spans: list[str]) -> str | None:
    """The translation with the protected spans back; None if the model lost or duplicated a marker."""
    for number, span in enumerate(spans):
        if text.count(MARKER.format(number)) != 1:
            return None
        text = text.replace(MARKER.format(number), span)
    return text


def translation_messages(text: str, lang: str) -> list[dict[str, str]]:
    name = languages.get(lang).name
    return [{"role": "system", "content": "You are a professional translator."},
            {"role": "user", "content": f"Translate the following text from English into {name}. Keep every ⟦n⟧ "
                                        f"marker exactly as it is. Reply with the translation only.\n\n{text}"}]


def is_code_instruction(row: dict[str, Any]) -> bool:
    return bool(CODE_KEYWORDS.search(f"{row['instruction']} {row.get('input', '')}"))


def translate(config: TranslateConfig) -> dict[str, Any]:
    rows = read_rows(config.input)
    targets = [lang for lang in languages.parse_langs(config.langs) if lang != "en"]
    if not targets:
        raise ConfigError("--langs: no target language besides English.")
    client = make_client(config)
    fields = ("instruction", "input", "output") if config.translate_output else ("instruction", "input")
    todo = [(row, lang) for row in rows for lang in targets
            if not (config.code_instructions == "skip" and is_code_instruction(row))]
    texts = {(row["id"], lang, field): row.get(field) or "" for row, lang in todo for field in fields}
    if config.dry_run:
        requests = [translation_messages(protect(text)[0], lang) for (_, lang, _), text in texts.items() if text]
        return dry_run_report(client, config.model, requests, config.max_tokens, config.price_per_1m_tokens)
    results = asyncio.run(_translate_all(client, config, texts, rows))
    out_rows, failed = [], 0
    for row, lang in todo:
        keep_english = config.code_instructions == "keep" and is_code_instruction(row)
        translated = {field: row.get(field) or "" if keep_english else results[(row["id"], lang, field)]
                      for field in fields}
        if any(value is None for value in translated.values()):
            failed += 1
            continue
        out_rows.append({**row, **translated, "lang": lang, "source_lang": "en", "translate_engine": config.engine,
                         "translate_model": config.model, "translated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    counts = write_by_language(Path(config.output_dir), out_rows)
    return {"rows": counts, "failed": failed, "usage": vars(client.usage)}


async def _translate_all(client, config: TranslateConfig, texts: dict, rows) -> dict:
    async def one(key, text):
        if not text:
            return key, ""
        protected, spans = protect(text)
        reply = await client.chat(config.model, translation_messages(protected, key[1]),
                                  **client_params(config.max_tokens))
        return key, restore(reply["content"].strip(), spans) if reply else None

    try:
        pairs = await run_all([lambda k=key, t=text: one(k, t) for key, text in texts.items()], "translate")
    finally:
        await client.close()
    return dict(pairs)
