"""Talking to LLM and translation endpoints for jobs of many requests: a SQLite request cache (a result committed
per request, failures recorded) and a client with bounded concurrency, rate limits and retries. Used by
`bactrian data` (translate, generate) and `bactrian eval judge`."""
