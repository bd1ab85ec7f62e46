"""`bactrian data translate`: instruction and input (and output with --translate_output) into each target
language, with an LLM (any OpenAI-compatible chat endpoint), Google Cloud Translation v2 or DeepL. Code blocks,
inline code, URLs and {{placeholders}} are swapped for markers before translation and put back after;
programming instructions (keyword rule, as the paper) are kept in English or skipped."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

from .. import languages
from ..endpoints.cache import request_key
from ..endpoints.client import RateLimits, Requester
from ..errors import ConfigError
from ..fileio import holds_output
from ..records import write_by_language
from .config import TranslateConfig
from .jobs import (
    REMOTE_ONLY,
    make_client,
    read_job_input,
    refuse_unused,
    request_cache,
    run_all,
    run_chats,
)

PROTECTED = re.compile(r"```.*?```|`[^`\n]+`|https?://\S+|\{\{[^}]*\}\}", re.DOTALL)
CODE_KEYWORDS = re.compile(r"\b(code|program|programming|function|python|java|javascript|c\+\+|sql|html|css|"
                           r"regex|algorithm|script|compile|debug|api)\b", re.IGNORECASE)
MARKER = "⟦{}⟧"


GOOGLE_URL, DEEPL_URL = "https://translation.googleapis.com", "https://api.deepl.com"
GOOGLE_SEGMENTS, DEEPL_TEXTS = 128, 50  # most segments per request, per the APIs' documentation
GOOGLE_CODES = {"zh": "zh-CN", "he": "iw"}
DEEPL_CODES = {code: code.upper() for code in ("ar", "cs", "de", "es", "et", "fi", "fr", "id", "it", "ja", "ko",
                                                 "lt", "lv", "nl", "pl", "ro", "ru", "sl", "sv", "tr", "uk")}
DEEPL_CODES.update({"pt": "PT-PT", "zh": "ZH-HANS"})


def protect(text: str) -> tuple[str, list[str]]:
    spans: list[str] = []

    def swap(match: re.Match) -> str:
        spans.append(match.group(0))
        return MARKER.format(len(spans) - 1)

    return PROTECTED.sub(swap, text), spans


def restore(text: str, spans: list[str]) -> str | None:
    """The translation with the protected spans back; None if it lost or duplicated a marker."""
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


LOCAL_UNUSED = tuple(name for name in REMOTE_ONLY if name != "dry_run")  # hf translation prices a dry run
UNUSED_BY_ENGINE = {"hf": LOCAL_UNUSED, "llm": ("decode_batch_size",),
                    "google": ("model", "decode_batch_size", "max_new_tokens", "batch_file", "batch_results"),
                    "deepl": ("model", "decode_batch_size", "max_new_tokens", "batch_file", "batch_results")}


@holds_output("output_dir", "data translate")
def translate(config: TranslateConfig) -> dict[str, Any]:
    refuse_unused(config, UNUSED_BY_ENGINE[config.engine])
    rows = read_job_input(config.input, config.output_dir)
    targets = [lang for lang in languages.parse_langs(config.lang) if lang != "en"]
    if not targets:
        raise ConfigError("--langs: no target language besides English.")
    fields = ("instruction", "input", "output") if config.translate_output else ("instruction", "input")
    todo = [(row, lang) for row in rows for lang in targets
            if not (config.code_instructions == "skip" and is_code_instruction(row))]
    texts = {(row["id"], lang, field): row.get(field) or "" for row, lang in todo for field in fields
             if not (config.code_instructions == "keep" and is_code_instruction(row))}
    engines = {"llm": lambda: _llm(config, texts), "hf": lambda: _local(config, texts),
               "google": lambda: _machine_translation(config, texts, targets),
               "deepl": lambda: _machine_translation(config, texts, targets)}
    translated = engines[config.engine]()
    if "requests" in translated or "batch_file" in translated:  # --dry_run / --batch_file summary
        return translated
    out_rows, failed = [], 0
    for row, lang in todo:
        values = {field: translated.get((row["id"], lang, field), row.get(field) or "") for field in fields}
        if any(value is None for value in values.values()):
            failed += 1
            continue
        out_rows.append({**row, **values, "lang": lang, "source_lang": "en", "translate_engine": config.engine,
                         "translate_model": config.model or config.engine,
                         "translated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    counts = write_by_language(Path(config.output_dir), out_rows)
    return {"rows": counts, "failed": failed, "usage": translated.pop("__usage__", {})}


def _llm(config: TranslateConfig, texts: dict) -> dict:
    keys = [key for key, text in texts.items() if text]
    protected = {key: protect(texts[key]) for key in keys}
    client = make_client(config)
    replies = run_chats(client, config, [translation_messages(protected[key][0], key[1]) for key in keys],
                        config.max_new_tokens, "translate")
    if isinstance(replies, dict):
        return replies
    result: dict = {key: "" for key, text in texts.items() if not text}
    for key, reply in zip(keys, replies):
        result[key] = restore(reply["content"].strip(), protected[key][1]) if reply else None
    result["__usage__"] = vars(client.usage)
    return result


def _local(config: TranslateConfig, texts: dict) -> dict:
    from .local import translate_locally

    if not config.model:
        raise ConfigError("--engine hf needs --model: a translation model folder or hub id (e.g. an NLLB-200 one).")
    protected = {key: protect(text) for key, text in texts.items() if text}
    segments: dict[str, list[str]] = {}
    for (_, lang, _), (text, _) in protected.items():
        segments.setdefault(lang, []).append(text)
    if config.dry_run:
        return {"requests": sum(map(len, segments.values())), "characters": sum(len(p[0]) for p in protected.values()),
                "estimated_cost": 0.0}
    done = translate_locally(config.model, segments, request_cache(config), config.decode_batch_size,
                             config.max_new_tokens)
    translated: dict = {key: "" for key, text in texts.items() if not text}
    for key, (text, spans) in protected.items():
        translated[key] = restore(done[(key[1], text)], spans)
    translated["__usage__"] = {"segments": len(protected)}
    return translated


def _machine_translation(config: TranslateConfig, texts: dict, targets: list[str]) -> dict:
    """Google v2 (format=text, at most 128 segments a request) or DeepL (at most 50 texts a request)."""
    google = config.engine == "google"
    codes = GOOGLE_CODES if google else DEEPL_CODES
    if not google:
        unsupported = [lang for lang in targets if lang not in DEEPL_CODES]
        if unsupported:
            raise ConfigError(f"DeepL does not translate into {', '.join(unsupported)}; use --engine google or llm.")
    api_key = config.api_key or os.environ.get("GOOGLE_API_KEY" if google else "DEEPL_AUTH_KEY", "")
    if not api_key:
        raise ConfigError(f"No API key for {config.engine}: pass --api_key or set "
                          f"{'GOOGLE_API_KEY' if google else 'DEEPL_AUTH_KEY'}.")
    base_url = (config.base_url or (GOOGLE_URL if google else DEEPL_URL)).rstrip("/")
    size = GOOGLE_SEGMENTS if google else DEEPL_TEXTS
    chunks = []
    for lang in targets:
        keys = [key for key, text in texts.items() if key[1] == lang and text]
        chunks += [(lang, keys[start:start + size]) for start in range(0, len(keys), size)]
    protected = {key: protect(texts[key]) for _, keys in chunks for key in keys}
    if config.dry_run:
        characters = sum(len(protected[key][0]) for key in protected)
        return {"requests": len(chunks), "characters": characters,
                "estimated_cost": characters * config.price_per_1m_tokens / 1e6}
    requester = Requester(request_cache(config), RateLimits.of(config), secrets=[api_key])
    results = asyncio.run(_send_chunks(requester, base_url, api_key, google, codes, chunks, protected))
    translated: dict = {key: "" for key, text in texts.items() if not text}
    for (lang, keys), reply in zip(chunks, results):
        for index, key in enumerate(keys):
            translated[key] = restore(reply["translations"][index], protected[key][1]) if reply else None
    translated["__usage__"] = {**vars(requester.usage), "characters": sum(len(p[0]) for p in protected.values())}
    return translated


async def _send_chunks(requester: Requester, base_url: str, api_key: str, google: bool, codes: dict,
                       chunks: list, protected: dict) -> list:
    import httpx

    async with httpx.AsyncClient(timeout=120) as http:
        def sender(lang: str, segments: list[str]):
            async def send() -> dict[str, Any]:
                if google:
                    response = await http.post(f"{base_url}/language/translate/v2",
                                               headers={"X-Goog-Api-Key": api_key},  # never in the URL
                                               json={"q": segments, "target": codes.get(lang, lang), "source": "en",
                                                     "format": "text"})
                    response.raise_for_status()
                    return {"translations": [t["translatedText"] for t in response.json()["data"]["translations"]]}
                response = await http.post(f"{base_url}/v2/translate",
                                           headers={"Authorization": f"DeepL-Auth-Key {api_key}"},
                                           json={"text": segments, "target_lang": codes[lang], "source_lang": "EN"})
                response.raise_for_status()
                return {"translations": [t["text"] for t in response.json()["translations"]]}
            return send

        jobs = []
        for lang, keys in chunks:
            segments = [protected[key][0] for key in keys]
            key = request_key(engine="google" if google else "deepl", base_url=base_url, target=lang, q=segments)
            jobs.append(lambda k=key, s=sender(lang, segments), n=sum(map(len, segments)): requester.run(k, s, n))
        return await run_all(jobs, "translate")
