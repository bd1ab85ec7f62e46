"""Scores of generated answers: language confusion (Marchisio et al. 2024), MGSM's number extraction and exact match
(as lm-evaluation-harness), SQuAD / MLQA exact match and F1 (the official normalisations), chrF++ and BLEU
(sacrebleu's own scores)."""

from __future__ import annotations

import re
import string
import sys
import unicodedata
from collections import Counter
from typing import Any

from .. import languages
from ..langid import MIN_LINE_WORDS, normalised_line, rank, word_count, written_in
from .statistics import sacrebleu_interval

# -- language confusion -------------------------------------------------------------------------------------
RUN_WORDS = 5  # a run of this many words in English inside a Latin-script answer is word-level confusion
RUN_CONFIDENCE = 0.9  # ... when the model is at least this sure it is English
_LATIN_WORD = re.compile(r"\b[a-z]{4,}\b")  # lower case: names and brands are capitalised


def _lines(answer: str) -> list[tuple[str, str]]:
    """(line, normalised line) pairs, as the paper's script normalises: stop at a follow-up question the model
    wrote itself, drop ASCII punctuation."""
    return [(line, normalised_line(line)) for line in answer.split("\nQ:")[0].strip().split("\n")]


def foreign_run(line: str, lang: str) -> str | None:
    """The first piece of `line` that is another language than `lang` at the word level: in a non-Latin-script
    language, a lower-case Latin word of 4+ letters (the paper's rule, without its English word list: any such
    word is foreign there); in a Latin-script language, RUN_WORDS consecutive words the model is sure are
    English and that do not read as `lang`."""
    if languages.get(lang).script != "Latn":
        found = _LATIN_WORD.search(line)
        return found.group(0) if found else None
    if lang == "en":
        return None
    words = line.split()
    for start in range(max(1, len(words) - RUN_WORDS + 1)):
        window = " ".join(words[start:start + RUN_WORDS])
        ranked = rank(window)
        if ranked and ranked[0][0] == "en" and ranked[0][1] >= RUN_CONFIDENCE and not written_in(window, lang):
            return window
    return None


def language_confusion(answer: str, lang: str) -> dict[str, Any]:
    """One answer's verdict: `line_pass` (every line of 5+ words is in `lang`), `word_pass` (no foreign word run
    in those lines; only judged when the lines pass), and what failed. An answer without such lines is skipped
    (`judged` False), as in the paper."""
    lines = [(line, text) for line, text in _lines(answer) if word_count(text) >= MIN_LINE_WORDS]
    if not lines:
        return {"judged": False, "line_pass": None, "word_pass": None}
    wrong = next((line for line, text in lines if not written_in(text, lang)), None)
    if wrong is not None:
        return {"judged": True, "line_pass": False, "word_pass": None, "failed": wrong}
    run = next(filter(None, (foreign_run(text, lang) for _, text in lines)), None)
    return {"judged": True, "line_pass": True, "word_pass": run is None, **({"failed": run} if run else {})}


# -- MGSM, as lm-evaluation-harness's mgsm_direct / mgsm_native_cot -------------------------------------------
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # lm-eval's "flexible-extract": the last number
FALLBACK = "[invalid]"


def regex_extract(text: str, pattern: re.Pattern, group_select: int = 0) -> str:
    """lm-eval's RegexFilter: the `group_select`-th match, its first non-empty group, stripped."""
    matches = pattern.findall(text)
    if not matches:
        return FALLBACK
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((group for group in match if group), FALLBACK)
    return match.strip()


def lm_eval_exact_match(prediction: str, reference: str) -> bool:
    """lm-eval's exact_match with ignore_case and ignore_punctuation (ASCII punctuation removed)."""
    table = str.maketrans("", "", string.punctuation)
    return prediction.lower().translate(table) == reference.lower().translate(table)


# -- extractive QA --------------------------------------------------------------------------------------------
UNICODE_PUNCTUATION = frozenset(chr(i) for i in range(sys.maxunicode + 1)
                                if unicodedata.category(chr(i)).startswith("P")) | frozenset(string.punctuation)
MLQA_ARTICLES = {"en": r"\b(a|an|the)\b", "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
                 "vi": r"\b(của|là|cái|chiếc|những)\b",
                 "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b", "ar": "\\sال^|ال"}
_HAN = re.compile(r"[\u4e00-\u9fa5]")


def squad_normalise(text: str) -> str:
    """SQuAD v1.1's official normalisation: lower case, no ASCII punctuation, no English articles, one space."""
    text = "".join(char for char in text.lower() if char not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def mlqa_tokens(text: str, lang: str) -> list[str]:
    """MLQA's official normalisation (all Unicode punctuation, the language's articles) and tokenization (Chinese
    characters one by one)."""
    text = "".join(char for char in text.lower() if char not in UNICODE_PUNCTUATION)
    if lang in MLQA_ARTICLES:
        text = re.sub(MLQA_ARTICLES[lang], " ", text)
    text = " ".join(text.split())
    return _mixed_segmentation(text) if lang == "zh" else text.split()


def _mixed_segmentation(text: str) -> list[str]:
    tokens, pending = [], ""
    for char in text:
        if _HAN.match(char) or char in UNICODE_PUNCTUATION:
            tokens += pending.split() + [char]
            pending = ""
        else:
            pending += char
    return tokens + pending.split()


def _f1(prediction: list[str], truth: list[str]) -> float:
    common = sum((Counter(prediction) & Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def qa_scores(prediction: str, answers: list[str], lang: str, mlqa: bool = False) -> dict[str, float]:
    """Exact match and F1 against the best of the gold answers (SQuAD v1.1's rule; MLQA's normalisation with
    `mlqa`)."""
    def tokens(text: str) -> list[str]:
        return mlqa_tokens(text, lang) if mlqa else squad_normalise(text).split()

    predicted = tokens(prediction)
    return {"em": float(max(predicted == tokens(answer) for answer in answers)),
            "f1": max(_f1(predicted, tokens(answer)) for answer in answers)}


# -- translation ----------------------------------------------------------------------------------------------
BLEU_TOKENIZERS = {"zh": "zh", "ja": "char", "th": "char", "my": "char", "km": "char"}  # else 13a


def translation_scores(hypotheses: list[str], references: list[str], target: str,
                       bootstrap: int = 1000) -> dict[str, Any]:
    """Corpus chrF++ and BLEU (sacrebleu), each with the 95% interval of sacrebleu's bootstrap resampling."""
    from sacrebleu.metrics import BLEU, CHRF

    scores: dict[str, Any] = {"n": len(hypotheses)}
    for name, metric in (("chrf++", CHRF(word_order=2)), ("bleu", BLEU(tokenize=BLEU_TOKENIZERS.get(target, "13a")))):
        scores[name] = float(metric.corpus_score(hypotheses, [references]).score)
        scores[f"{name}_ci95"] = sacrebleu_interval(metric, scores[name], hypotheses, references, bootstrap)
        scores[f"{name}_signature"] = str(metric.get_signature())
    return scores
