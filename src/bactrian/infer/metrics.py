"""`serve`'s /metrics: counters of answers, of what the language guard did and of what prompt lookup's guesses
gave, in Prometheus' text format.

Each app has its own registry (no process-wide state: two apps in one process count apart). Everything is
counted from what the server sends back, so `serve --upstream` counts its requests too. Label values are
bounded: adapters are the catalog's names, languages one of the 52 or "none" (the guard was asked for but no
language could be told), finish reasons those of FINISH_REASONS or "other"."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from ..languages import CODES

FINISH_REASONS = ("stop", "length", "cancelled", "error")
NO_LANGUAGE = "none"
# (name, help, the guard report's field counted)
GUARD_COUNTERS = (
    ("bactrian_guard_pieces_checked_total", "Pieces (lines or sentences) of answers the language guard judged.",
     "checked"),
    ("bactrian_guard_pieces_retried_total", "Pieces the language guard decoded again because they drifted.",
     "retried"),
    ("bactrian_guard_retries_total", "Re-decodes of drifting pieces, in all.", "retries"),
    ("bactrian_guard_pieces_unfixed_total", "Pieces still drifting when kept after the last retry.", "unfixed"),
)
SPECULATION_COUNTERS = (
    ("bactrian_speculation_guessed_tokens_total", "Tokens guessed by prompt lookup for a lone greedy row.",
     "guessed"),
    ("bactrian_speculation_kept_tokens_total", "Guessed tokens the model agreed with (each a forward saved).",
     "kept"),
)


class ServingMetrics:
    """The server's counters, in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = self._counter("bactrian_requests_total", "Answers sent (or ended), by finish reason.",
                                      "adapter", "finish_reason")
        self.completion_tokens = self._counter("bactrian_completion_tokens_total", "Tokens generated.", "adapter")
        self.guarded = self._counter("bactrian_guard_answers_total", "Answers the language guard was asked for "
                                     "(lang none: no language could be told, so the answer was not guarded).",
                                     "lang", "adapter")
        self.guard = {field: self._counter(name, text, "lang", "adapter") for name, text, field in GUARD_COUNTERS}
        self.speculation = {field: self._counter(name, text, "adapter") for name, text, field in SPECULATION_COUNTERS}

    def _counter(self, name: str, text: str, *labels: str) -> Counter:
        return Counter(name, text, labels, registry=self.registry)

    def answered(self, adapter: str, finish_reason: str | None, completion_tokens: int,
                 guard: dict[str, Any] | None, speculation: dict[str, int] | None = None) -> None:
        """One answer ended (`finish_reason` None: the client left mid-stream); `guard` is the guard's report,
        when it was asked for, `speculation` what its guesses gave, when it guessed."""
        reason = finish_reason or "cancelled"
        self.requests.labels(adapter, reason if reason in FINISH_REASONS else "other").inc()
        self.completion_tokens.labels(adapter).inc(completion_tokens)
        if guard is not None:
            lang = guard["lang"] if guard["lang"] in CODES else NO_LANGUAGE
            self.guarded.labels(lang, adapter).inc()
            for field, counter in self.guard.items():
                counter.labels(lang, adapter).inc(guard.get(field, 0))
        for field, counter in self.speculation.items():
            counter.labels(adapter).inc((speculation or {}).get(field, 0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
