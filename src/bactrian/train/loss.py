"""Cross-entropy on target tokens only, computed chunk by chunk so that the full [tokens, vocab] logits of a
batch never exist at once (Gemma's 262k vocabulary makes them gigabytes)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .dataset import IGNORE_INDEX, MicroBatch

LOGIT_BUDGET = 1 << 24  # logits per chunk: 16M floats, 64 MB in fp32


def causal_lm_of(model: Any) -> Any:
    """The transformers *ForCausalLM under a PEFT wrapper (LoRA layers live inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def token_losses(model: Any, batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses of every target token in the batch, and the example each belongs to."""
    lm = causal_lm_of(model)
    device = lm.get_output_embeddings().weight.device
    hidden = lm.get_decoder()(
        input_ids=batch.input_ids.to(device),
        attention_mask=None if batch.attention_mask is None else batch.attention_mask.to(device),
        position_ids=batch.position_ids.to(device),
        use_cache=False,
    ).last_hidden_state
    targets = batch.labels[:, 1:].to(device)
    keep = targets != IGNORE_INDEX
    selected = hidden[:, :-1][keep]
    owners = batch.example_index[:, 1:].to(device)[keep]
    losses = chunked_cross_entropy(selected, lm.get_output_embeddings(), targets[keep],
                                   getattr(lm.config, "final_logit_softcapping", None))
    return losses, owners


def chunked_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                          softcap: float | None) -> torch.Tensor:
    chunk = max(1, LOGIT_BUDGET // head.weight.shape[0])
    pieces = [
        checkpoint(_chunk_loss, hidden[start:start + chunk], head, targets[start:start + chunk], softcap,
                   use_reentrant=False)
        if torch.is_grad_enabled() else _chunk_loss(hidden[start:start + chunk], head,
                                                    targets[start:start + chunk], softcap)
        for start in range(0, hidden.shape[0], chunk)
    ]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0)


def _chunk_loss(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="none")
