"""The two contracts of inference, named: what decoding needs from a model (`DecodingModel`: the engine is one),
and what the server needs from whoever generates (`Backend`: the local batcher or an upstream server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from .requests import Delta, Request


class DecodingModel(Protocol):
    """A causal LM that decodes rows with their own adapters on a KV cache the caller owns."""

    tokenizer: Any
    device: Any
    eos_token_ids: set[int]
    lock: Any  # a threading.Lock: one batch step (or other work) on the model at a time
    kv_bytes_per_token: int  # one token of one row in the KV cache, all layers
    kv_budget_bytes: int  # the most the KV cache may take (0: no bound)
    mode: dict[str, Any]  # how it decodes (dtype, quantization, ...): for /health and the log
    speculation: bool  # a lone greedy row guesses its next tokens (prompt lookup, `speculation.py`)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                adapters: Sequence[str], keep: int = 1) -> torch.Tensor:
        """The last `keep` positions' logits of one step, each row with its adapter, extending `cache`."""

    def beam_search(self, index: int, request: Request) -> Delta:
        """A beam-search request's whole answer (beams decode apart from the batch)."""


class Backend(Protocol):
    """Generation behind the OpenAI API: requests in, each one's stream of deltas out."""

    def submit(self, request: Request) -> AsyncIterator[Delta]:
        """The request's deltas as they come (a refusal raises before any: e.g. a full queue)."""

    def health(self) -> dict[str, Any]:
        """`status` ("ok" or "error") and what else the backend can say about itself."""
