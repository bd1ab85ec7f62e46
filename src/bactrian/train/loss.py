"""Cross-entropy on target tokens only, computed chunk by chunk so that the full [tokens, vocab] logits of a
batch never exist at once (Gemma's 262k vocabulary makes them gigabytes).

With a frozen output layer (always so for LoRA unless the head itself is adapted) the gradient with respect to
the hidden states is computed in the same pass as the loss, chunk by chunk: softmax minus one-hot, times the
head's weight. That costs two matmuls per chunk instead of three for forward, recompute and backward."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .dataset import IGNORE_INDEX, MicroBatch

LOGIT_BUDGET = 1 << 26  # logits per chunk: 64M floats, 256 MB in fp32 (256 tokens of a 262k vocabulary)


def causal_lm_of(model: Any) -> Any:
    """The transformers *ForCausalLM under a PEFT wrapper (LoRA layers live inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def token_losses(model: Any, batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses of every target token in the batch, and the example each belongs to."""
    lm = causal_lm_of(model)
    head = lm.get_output_embeddings()
    device = head.weight.device
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
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    return linear_cross_entropy(selected, head, targets[keep], softcap), owners


def linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                         softcap: float | None = None) -> torch.Tensor:
    """Per-token cross-entropy of head(hidden) against targets, never holding more than one chunk of logits."""
    chunk = max(1, LOGIT_BUDGET // head.weight.shape[0])
    frozen_linear = type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad
    if frozen_linear:
        return _FrozenLinearCrossEntropy.apply(hidden, head.weight, targets, softcap, chunk)
    pieces = [
        checkpoint(_chunk_loss, hidden[start:start + chunk], head, targets[start:start + chunk], softcap,
                   use_reentrant=False)
        for start in range(0, hidden.shape[0], chunk)
    ]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0)


def _chunk_loss(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="none")


class _FrozenLinearCrossEntropy(torch.autograd.Function):
    """Loss and d(loss)/d(hidden) in one chunked pass; the weight gets no gradient (it is frozen)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk):
        losses, grads = [], []
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = (hidden[rows] @ weight.T).float()
            capped = torch.tanh(logits / softcap) if softcap else None
            if softcap:
                logits = capped * softcap
            log_probs = torch.log_softmax(logits, dim=-1, out=logits)  # in place: one chunk of logits at a time
            target = targets[rows]
            losses.append(-log_probs.gather(1, target[:, None]).squeeze(1))
            if ctx.needs_input_grad[0]:
                grad_logits = log_probs.exp_()  # softmax, in place: one pass, no new tensor
                grad_logits[torch.arange(target.shape[0], device=target.device), target] -= 1
                if softcap:
                    grad_logits *= 1 - capped.square()
                grads.append(grad_logits.to(weight.dtype) @ weight)  # d(loss_i)/d(hidden_i); W frozen: no dW
        ctx.save_for_backward(torch.cat(grads) if grads else hidden.new_zeros(0))
        return torch.cat(losses) if losses else hidden.new_zeros(0, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_losses):
        (grad_hidden,) = ctx.saved_tensors
        # loss i depends on hidden row i alone, so the chain rule scales each saved row by its loss's gradient
        return grad_hidden * grad_losses[:, None].to(grad_hidden.dtype), None, None, None, None
