"""The language guard: an answer kept in the user's language while it is decoded.

An answer is judged piece by piece as it grows: a piece ends at a line break, or at the end of a sentence once it
holds MIN_LINE_WORDS words (a short sentence waits for the next). Each piece is checked by language confusion's
line rule (`langid.line_verdict`), so pieces the language ID cannot judge (numbers, names, short lines) pass,
and so do the lines of a fenced code block. Pieces are cut at token boundaries: the tokens before a piece are
kept for good (and may be shown); a piece that drifts into another language is taken back (its tokens dropped,
`rewind`) and decoded again with the drift
discouraged: the token that began each drifting attempt is banned at the piece's first position, and when the
drift was into another script, every token written in that script is banned until the piece ends. After
`max_retries` attempts the last one is kept and marked as not fixed.

Nothing changes for a piece that does not drift: a greedy answer that never drifts is decoded token for token as
without the guard. A stream shows a guarded answer up to the last piece that passed: it holds back at most the
piece being checked."""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Any

import torch

from ..langid import (
    MIN_LINE_WORDS,
    detect_language,
    line_verdict,
    normalised_line,
    script_of,
    script_of_language,
    word_count,
)
from .requests import LanguageGuard

MAX_RETRIES_PER_ANSWER = 8  # however many pieces drift, an answer is decoded again at most this many times
SENTENCE_END = re.compile(r"[.!?।॥؟](?=\s)|[。！？]")
CODE_FENCE = "```"  # pieces inside a fenced code block pass unjudged: code is not prose in a language
NO_TOKEN = -1  # in `GuardedAnswer.ends`: a token that ends inside a character, where no piece may be cut


class GuardedAnswer:
    """One answer's guard: where its kept text ends, the piece being checked, what it did."""

    def __init__(self, guard: LanguageGuard):
        self.lang, self.max_retries = guard.lang, guard.max_retries
        self.kept = 0  # tokens kept for good
        self.kept_chars = 0  # the length of their text
        self.ends: list[int] = []  # the text's length after each token (NO_TOKEN inside a character)
        self.attempts = 0  # retries of the piece being decoded
        self.first_tokens: set[int] = set()  # tokens that began the piece's drifting attempts
        self.banned_script: str | None = None
        self.drifted: str | None = None  # the piece's first drifting attempt
        self.drifted_lang: str | None = None
        self.checked = self.retries = self.unfixed = 0
        self.corrections: list[dict[str, Any]] = []

    # -- decoding ------------------------------------------------------------------------------------------
    def record(self, text: str) -> None:
        """A token was appended; `text` is the answer's text with it."""
        self.ends.append(NO_TOKEN if text.endswith("\ufffd") else len(text))

    def bans(self, position: int) -> tuple[set[int], str | None]:
        """Tokens and the script banned for the token at `position` of the answer."""
        first = self.first_tokens if position == self.kept else set()
        return first, self.banned_script if self.attempts else None

    def review(self, text: str, tokens: list[int], finished: bool) -> bool:
        """Judge the pieces `text` has completed (all of it when `finished`); True when the answer must be rewound
        to `kept` tokens and the piece decoded again."""
        while (piece := self._next_piece(text, len(tokens), finished)) is not None:
            count, end = piece
            in_code = text.count(CODE_FENCE, 0, self.kept_chars) % 2 == 1
            verdict = None if in_code else line_verdict(text[self.kept_chars:end], self.lang)
            self.checked += verdict is not None
            if (verdict is False and count > self.kept and self.attempts < self.max_retries
                    and self.retries < MAX_RETRIES_PER_ANSWER):
                self._drifted(text[self.kept_chars:end], tokens[self.kept])
                return True
            self._accept(text[self.kept_chars:end], count, end, fixed=verdict is not False)
        return False

    def _next_piece(self, text: str, tokens: int, finished: bool) -> tuple[int, int] | None:
        """(tokens, characters) of the kept text and the next complete piece, or None while it is incomplete."""
        if self.kept_chars >= len(text):
            return None
        pending = text[self.kept_chars:]
        for boundary in _boundaries(pending):
            if pending[boundary - 1] != "\n" and word_count(normalised_line(pending[:boundary])) < MIN_LINE_WORDS:
                continue  # a short sentence waits for the next
            count = self._tokens_within(self.kept_chars + boundary, tokens)
            if count > self.kept:
                return count, self.ends[count - 1]
        return (tokens, len(text)) if finished else None

    def _tokens_within(self, chars: int, tokens: int) -> int:
        """The most tokens (at least `kept`) whose text ends at a character no later than `chars`."""
        count = self.kept
        for index in range(self.kept, tokens):
            if self.ends[index] != NO_TOKEN and self.ends[index] <= chars:
                count = index + 1
            elif self.ends[index] > chars:
                break
        return count

    def _drifted(self, piece: str, first_token: int) -> None:
        self.attempts += 1
        self.retries += 1
        self.first_tokens.add(first_token)
        lang = detect_language(normalised_line(piece))
        if self.drifted is None:
            self.drifted, self.drifted_lang = piece, lang
        script = script_of_language(lang) if lang else None
        if script and script != script_of_language(self.lang):
            self.banned_script = script
        del self.ends[self.kept:]

    def _accept(self, piece: str, count: int, end: int, fixed: bool) -> None:
        if self.attempts:
            self.corrections.append({"start": self.kept_chars, "text": piece, "drifted": self.drifted,
                                     "drifted_lang": self.drifted_lang, "fixed": fixed})
        self.unfixed += not fixed
        self.kept, self.kept_chars = count, end
        self.attempts, self.first_tokens, self.banned_script, self.drifted = 0, set(), None, None

    # -- what it did ---------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """What the guard checked, retried and could not fix, with each corrected piece."""
        return {"lang": self.lang, "checked": self.checked, "retried": len(self.corrections), "retries": self.retries,
                "unfixed": self.unfixed, "corrections": self.corrections}


def _boundaries(text: str) -> list[int]:
    """Where pieces may end in `text`: after each line break, and after each sentence's last character."""
    ends = {match.end() for match in SENTENCE_END.finditer(text)}
    ends.update(index + 1 for index, char in enumerate(text) if char == "\n")
    return sorted(ends)


def ban(logits: torch.Tensor, tokenizer: Any, tokens: set[int], script: str | None) -> None:
    """Ban `tokens` and every token written in `script` from one row's logits, in place."""
    if tokens:
        logits[list(tokens)] = float("-inf")
    if script:
        scripts, names = token_scripts(tokenizer)
        if script in names:
            logits[: len(scripts)][scripts == names.index(script)] = float("-inf")


@functools.lru_cache(maxsize=4)
def token_scripts(tokenizer: Any) -> tuple[torch.Tensor, list[str]]:
    """The script most letters of each token are in, as an index into the list of scripts (-1: no letters), once
    per tokenizer (Gemma's 262k tokens: about a second). Kana counts as Han, as in `langid`; special tokens (EOS)
    have none."""
    found = [_main_script(text) for text in _token_texts(tokenizer)]
    names = [script for script in dict.fromkeys(found) if script is not None]
    number = {script: index for index, script in enumerate(names)}
    return torch.tensor([number.get(script, -1) for script in found], dtype=torch.int16), names


def _token_texts(tokenizer: Any) -> list[str]:
    """Each token's text alone: by the Rust tokenizer's batch decode where there is one (parallel), else one by one."""
    ids = [[index] for index in range(len(tokenizer))]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.decode_batch(ids, skip_special_tokens=True)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def _main_script(text: str) -> str | None:
    counts = Counter(script_of(char) for char in text if char.isalpha())
    counts.pop(None, None)
    if not counts:
        return None
    script = max(counts, key=counts.get)
    return "Hans" if script == "Jpan" else script
