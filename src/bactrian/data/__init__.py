"""Machinery for jobs of many requests to LLM endpoints: a request cache and a rate-limited, retrying client."""
