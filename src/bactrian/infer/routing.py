"""`auto`: which loaded model answers a request, decided by the language of the user's words.

The rule, in order:
1. The language is that of the last user message. A text too short to tell (fewer than MIN_LETTERS letters,
   like "ok" or "Danke!", unless its script belongs to one language only) or one the detector is unsure of
   keeps the conversation's earlier language: that of the most recent earlier user message that can be told.
2. The adapters covering that language (its `bactrian.json` lists it, or, with no list, the adapter is named
   after it) compete: the most specific first (fewest languages), then the lowest eval loss measured on that
   language at training time (`metrics.eval_loss_per_lang` in `bactrian.json`; unmeasured counts as worst),
   then the name, alphabetically.
3. No adapter covers it (or no language could be told): with `--auto_fallback multilingual` (the default),
   the multilingual adapter (two or more languages) covering the most languages, then the lowest mean eval
   loss, then the name; with `--auto_fallback base`, or when no adapter is multilingual, the base model.

Every decision comes with the language, the detector's confidence and the reason, so users can see why."""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

from ..adapters import BASE, AdapterCard
from .requests import LanguageGuard

AUTO = "auto"  # route by the language of the input
FALLBACKS = ("multilingual", "base")
MIN_LETTERS = 10
DETECT_CHARS = 4096
# scripts written by one Bactrian-X language only: even a short text in them names its language
_SCRIPT_LANGUAGE = {"HIRAGANA": "ja", "KATAKANA": "ja", "HANGUL": "ko", "GEORGIAN": "ka", "HEBREW": "he",
                    "THAI": "th", "KHMER": "km", "MYANMAR": "my", "SINHALA": "si", "TAMIL": "ta", "TELUGU": "te",
                    "MALAYALAM": "ml", "GUJARATI": "gu", "BENGALI": "bn"}


@dataclass
class Route:
    """Which model answers, and why (shown in responses, generate's rows and the chat page)."""

    adapter: str
    lang: str | None = None
    confidence: float | None = None
    language_from: str = "request"  # request: the user named the model; detected; conversation; undetected
    rule: str = "requested"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def note(self) -> str:
        if self.rule == "requested":
            return f"Answered by: {self.adapter}"
        lang = f"{self.lang} ({self.confidence:.2f}, {self.language_from})" if self.lang else "not detected"
        return f"Answered by: {self.adapter} (detected language: {lang}; {self.reason})"


def short_text_language(text: str) -> str | None:
    """The language a short text's script alone names (kana: ja, Hangul: ko, ...), else None."""
    names = [unicodedata.name(ch, "") for ch in text if ch.isalpha()]
    for prefix, lang in _SCRIPT_LANGUAGE.items():
        if names and sum(name.startswith(prefix) for name in names) * 2 > len(names):
            return lang
    return None


def tell_language(text: str) -> tuple[str | None, float]:
    """The language of `text` (its first DETECT_CHARS characters: more tell nothing new, and a megabyte of them
    held the server's event loop for a second) and the detector's confidence; (None, score) when too short or
    unsure."""
    from ..langid import MIN_SCORE, detect_language_scored

    text = text[:DETECT_CHARS]
    if sum(ch.isalpha() for ch in text) < MIN_LETTERS:
        lang = short_text_language(text)
        return (lang, 1.0) if lang else (None, 0.0)
    lang, score = detect_language_scored(text)
    return (lang, score) if lang and score >= MIN_SCORE else (None, score)


def conversation_language(user_messages: list[str]) -> tuple[str | None, float, str]:
    """The language of the last user message, else of the latest earlier one that can be told."""
    for position, text in enumerate(reversed(user_messages)):
        lang, score = tell_language(text)
        if lang:
            return lang, score, "detected" if position == 0 else "conversation"
    return None, 0.0, "undetected"


def guard_for(user_messages: list[str], retries: int, lang: str | None = None) -> LanguageGuard | None:
    """The language guard of an answer: in `lang`, else in the user's language by the rule above; None when no
    language can be told."""
    lang = lang or conversation_language(user_messages)[0]
    return LanguageGuard(lang, retries) if lang else None


def choose(adapters: list[AdapterCard], user_messages: list[str], fallback: str = "multilingual") -> Route:
    """Apply the rule above to the loaded adapters and the user's messages (oldest first)."""
    lang, score, source = conversation_language(user_messages)
    covering = [adapter for adapter in adapters if lang and adapter.covers(lang)]
    if covering:
        best = min(covering, key=lambda a: (len(a.languages), a.loss_on(lang), a.name))
        return Route(best.name, lang, score, source, "covers-language", _why_covering(best, covering, lang))
    missing = f"no adapter covers {lang}" if lang else "the language could not be told"
    multilingual = [adapter for adapter in adapters if len(adapter.languages) > 1]
    if fallback == "multilingual" and multilingual:
        best = min(multilingual, key=lambda a: (-len(a.languages), a.mean_loss(), a.name))
        return Route(best.name, lang, score, source, "fallback-multilingual",
                     f"{missing}; {best.name} is the multilingual adapter covering the most languages "
                     f"({len(best.languages)})")
    return Route(BASE, lang, score, source, "fallback-base",
                 f"{missing}; the base model answers (--auto_fallback {fallback})")


def _why_covering(best: AdapterCard, covering: list[AdapterCard], lang: str) -> str:
    if len(covering) == 1:
        return f"the only adapter covering {lang}"
    rivals = [a for a in covering if len(a.languages) == len(best.languages)]
    if len(rivals) == 1:
        return f"the most specific of {len(covering)} adapters covering {lang} ({len(best.languages)} languages)"
    if best.loss_on(lang) < min(a.loss_on(lang) for a in rivals if a is not best):
        return f"lowest eval loss on {lang} ({best.loss_on(lang):.4f}) of {len(rivals)} equally specific adapters"
    return f"first by name of {len(rivals)} equally specific adapters with equal eval loss on {lang}"
