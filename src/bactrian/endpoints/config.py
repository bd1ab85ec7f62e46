"""Options of talking to an endpoint that every verb sending requests shares (the data verbs, the judge)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import option


@dataclass
class RateOptions:
    concurrency: int = option(16, "Requests in flight to the endpoint.")
    requests_per_minute: int = option(0, "Requests per minute to the endpoint (0: no limit).")
    tokens_per_minute: int = option(0, "Tokens per minute to the endpoint, estimated (0: no limit).")
