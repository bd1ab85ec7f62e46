"""Local engines for `bactrian data`: machine translation with a seq2seq model through transformers (NLLB-200,
M2M100, mBART-50, each with its own language codes) and answer generation with a causal model through the
bactrian engine. Results go through the same request cache as remote engines, so runs resume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .. import languages
from ..endpoints.cache import RequestCache, request_key
from ..errors import ConfigError, ModelError

SOURCE_CODES = {"nllb": "eng_Latn", "m2m100": "en", "mbart50": "en_XX"}


def model_family(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    if "eng_Latn" in vocab:
        return "nllb"
    if "en_XX" in vocab:
        return "mbart50"
    if "__en__" in vocab:
        return "m2m100"
    raise ConfigError("--engine hf needs an NLLB-200, M2M100 or mBART-50 translation model; this tokenizer has none "
                      "of their language codes.")


def target_token(family: str, lang: str) -> str:
    """The token that starts a translation into `lang`: FLORES-200 for NLLB, __iso__ for M2M100, locale for
    mBART-50."""
    language = languages.get(lang)
    return {"nllb": language.flores, "m2m100": f"__{language.code}__", "mbart50": language.locale}[family]


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def translate_locally(model_name: str, segments: dict[str, list[str]], cache: RequestCache, batch_size: int,
                      max_tokens: int) -> dict[tuple[str, str], str]:
    """{(lang, text): translation} for every text of every target language, batched, cached per text."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ..models import pick_device

    tokenizer = AutoTokenizer.from_pretrained(model_name)
    family = model_family(tokenizer)
    device = pick_device()
    model = AutoModelForSeq2SeqLM.from_pretrained(model_name).to(device).eval()
    tokenizer.src_lang = SOURCE_CODES[family]
    results: dict[tuple[str, str], str] = {}
    for lang, texts in segments.items():
        token = target_token(family, lang)
        forced = tokenizer.convert_tokens_to_ids(token)
        if forced is None or forced == tokenizer.unk_token_id:
            raise ModelError(f"{model_name} has no language code {token} for {lang}.")
        keys = {text: request_key(engine="hf-mt", model=model_name, target=token, text=text) for text in texts}
        todo = [text for text in dict.fromkeys(texts) if cache.get(keys[text]) is None]
        for batch in _batches(todo, batch_size):
            inputs = tokenizer(batch, return_tensors="pt", padding=True, truncation=True).to(device)
            with torch.no_grad():
                output = model.generate(**inputs, forced_bos_token_id=forced, max_new_tokens=max_tokens, num_beams=1)
            for text, translated in zip(batch, tokenizer.batch_decode(output, skip_special_tokens=True)):
                cache.put(keys[text], {"content": translated})
        results.update({(lang, text): cache.get(keys[text])["content"] for text in texts})
    return results


def generate_locally(model_name: str, conversations: list[list[dict[str, str]]], cache: RequestCache,
                     batch_size: int, max_tokens: int) -> list[dict[str, Any]]:
    """Answers of a local causal model (its chat template if it has one), batched, cached per conversation."""
    from ..infer.engine import Engine
    from ..infer.requests import Request, SamplingParams
    from ..infer.routing import BASE
    from ..prompts import load_template

    keys = [request_key(engine="hf-chat", model=model_name, messages=m, max_tokens=max_tokens) for m in conversations]
    todo = [index for index, key in enumerate(keys) if cache.get(key) is None]
    if todo:
        engine = Engine(model_name, prompt_template_name="bactrian")
        if getattr(engine.tokenizer, "chat_template", None):
            engine.catalog.default_template = load_template("chat")
        for batch in _batches(todo, batch_size):
            requests = [Request(engine.catalog.encode_chat(BASE, conversations[i]),
                                SamplingParams(max_new_tokens=max_tokens)) for i in batch]
            for index, (text, reason, tokens) in zip(batch, engine.generate(requests)):
                cache.put(keys[index], {"content": text, "finish_reason": reason,
                                        "usage": {"completion_tokens": tokens}})
    return [cache.get(key) for key in keys]
