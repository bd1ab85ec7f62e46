"""Inference: one engine (batched, streaming, many adapters) behind chat, generate and serve."""
