"""Log-likelihood of each choice, batched: every (context, continuation) pair becomes one sequence whose
continuation tokens are the targets, sequences are packed into rows (no attention across them), and the loss
machinery of training returns each target token's -log p. Tokenization follows lm-evaluation-harness."""

from __future__ import annotations

from typing import Any

import torch

from ..train import dataset as ds
from ..train.loss import token_losses
from .tasks.base import Item

ROW_TOKENS = 128  # packed row length: short rows keep the (dense) attention over a packed row cheap
MAX_LENGTH = 2048  # longer pairs are left-truncated, as lm-eval does at the model's length


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """As lm-eval: trailing spaces move to the continuation; the whole is encoded, then split at the context."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, whole[len(context_ids):]


def to_examples(items: list[Item], tokenizer: Any, max_length: int) -> list[ds.Example]:
    examples = []
    for item in items:
        for choice, (context, continuation) in enumerate(zip(item.contexts, item.continuations)):
            context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
            ids = (context_ids + continuation_ids)[-max_length:]  # left-truncate, as lm-eval
            labels = ([ds.IGNORE_INDEX] * len(context_ids) + continuation_ids)[-max_length:]
            examples.append(ds.Example(f"{item.id}#{choice}", item.lang, tuple(ids), tuple(labels)))
    return examples


@torch.no_grad()
def loglikelihoods(model: Any, tokenizer: Any, items: list[Item], rows_per_batch: int = 16,
                   max_length: int = MAX_LENGTH) -> list[list[float]]:
    """For each item, the summed log-likelihood of each of its choices."""
    model.eval()
    examples = to_examples(items, tokenizer, max_length)
    totals: dict[str, float] = {}
    for micro in ds.micro_batches(examples, rows_per_batch, tokenizer.pad_token_id, packing=True,
                                  row_tokens=ROW_TOKENS, group_by_length=False):
        losses, owners = token_losses(model, micro)
        sums = torch.zeros(len(micro.examples), dtype=torch.float64).index_add_(0, owners.cpu(),
                                                                                 losses.double().cpu())
        for example, total in zip(micro.examples, sums.tolist()):
            totals[example.id] = -total
    return [[totals[f"{item.id}#{choice}"] for choice in range(len(item.continuations))] for item in items]
