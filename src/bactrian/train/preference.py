"""Preference optimisation on pairs (a prompt, a chosen and a rejected answer): DPO (Rafailov et al. 2023) and
ORPO (Hong et al. 2024), as TRL's DPOTrainer and ORPOTrainer compute them.

A micro-batch holds the chosen and the rejected sequences of some pairs (padded or packed like SFT's); the
fused loss of training gives every answer token's -log p, summed per sequence. DPO's reference is the same
model with the adapter switched off (the base: no second copy in memory) or, when training starts from an
adapter (`--init_adapter`), a frozen copy of that adapter's weights. The loss of a step is the sum over the
global batch's pairs divided by their number (ORPO's NLL term: over its tokens), so it does not depend on
micro-batching or processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import languages
from . import dataset as ds
from .loss import token_losses

REFERENCE = "reference"  # the frozen copy of --init_adapter that DPO compares against
STATS = ("pairs", "chosen_reward", "rejected_reward", "correct")  # per language, summed over pairs


@dataclass
class PairOutputs:
    """Per pair: the answers' summed log-probabilities and token counts; ORPO's NLL sum over the chosen
    sequences."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    nll_sum: torch.Tensor


def pair_batch(pairs: list[ds.Pair], pad_id: int, packing: bool, row_tokens: int,
               learn_prompt: bool = False) -> tuple[ds.MicroBatch, torch.Tensor, torch.Tensor]:
    """One micro-batch of the chosen then the rejected sequences; for each of them, the pair's slot in
    [chosen..., rejected...] order (packing reorders rows) and where its answer starts."""
    examples = [pair.chosen(learn_prompt) for pair in pairs] + [pair.rejected() for pair in pairs]
    [micro] = ds.micro_batches(examples, len(examples), pad_id, packing, row_tokens, group_by_length=False)
    slot_of = {id(example): slot for slot, example in enumerate(examples)}
    slots = torch.tensor([slot_of[id(example)] for example in micro.examples])
    answer_starts = torch.tensor([pair.prompt_len for pair in pairs] * 2)[slots]
    return micro, slots, answer_starts


def forward_pairs(model: Any, micro: ds.MicroBatch, slots: torch.Tensor, answer_starts: torch.Tensor,
                  pairs: int) -> PairOutputs:
    losses, owners = token_losses(model, micro)
    losses, device = losses.float(), losses.device
    positions = micro.position_ids[:, 1:][micro.labels[:, 1:] != ds.IGNORE_INDEX].to(device)
    answer = positions >= answer_starts.to(device)[owners]
    slot = slots.to(device)[owners]
    logps = losses.new_zeros(2 * pairs).index_add(0, slot[answer], -losses[answer])
    tokens = losses.new_zeros(2 * pairs).index_add(0, slot[answer], answer[answer].float())
    nll_sum = losses[slot < pairs].sum()
    return PairOutputs(logps[:pairs], logps[pairs:], tokens[:pairs], tokens[pairs:], nll_sum)


@contextmanager
def reference_model(model: Any, has_reference_adapter: bool) -> Iterator[None]:
    """The model DPO compares against, without gradients or dropout: the frozen --init_adapter copy, else the
    base (adapter disabled)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), _reference_weights(model, has_reference_adapter):
            yield
    finally:
        model.train(training)


@contextmanager
def _reference_weights(model: Any, has_reference_adapter: bool) -> Iterator[None]:
    if not has_reference_adapter:
        with model.disable_adapter():
            yield
        return
    model.set_adapter(REFERENCE)
    try:
        yield
    finally:
        model.set_adapter("default")  # also makes "default" trainable again, "reference" frozen


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation (the branch at -ln 2, as TRL and Maechler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def dpo_losses(policy: PairOutputs, reference: PairOutputs, beta: float) -> tuple[torch.Tensor, ...]:
    """Per pair: the sigmoid DPO loss and the implicit rewards beta * log(pi / pi_ref) of both answers."""
    chosen = beta * (policy.chosen_logps - reference.chosen_logps)
    rejected = beta * (policy.rejected_logps - reference.rejected_logps)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


def orpo_losses(policy: PairOutputs, beta: float) -> tuple[torch.Tensor, ...]:
    """Per pair: ORPO's odds-ratio term -beta * log sigmoid(log odds(chosen) - log odds(rejected)) on the mean
    token log-probabilities, and the rewards beta * mean log p that TRL logs (the NLL term is added apart)."""
    chosen = policy.chosen_logps / policy.chosen_tokens.clamp(min=1)
    rejected = policy.rejected_logps / policy.rejected_tokens.clamp(min=1)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    return -beta * F.logsigmoid(log_odds), beta * chosen.detach(), beta * rejected.detach()


def nll_tokens(pair: ds.Pair, learn_prompt: bool) -> int:
    """The tokens ORPO's NLL term learns of the chosen sequence (the first token is never predicted)."""
    return len(pair.chosen_ids) - max(1, 0 if learn_prompt else pair.prompt_len)


def add_stats(stats: torch.Tensor, pairs: list[ds.Pair], chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    """Add pairs' rewards to `stats` ([languages, STATS] sums)."""
    rows = torch.tensor([languages.CODES.index(pair.lang) for pair in pairs])
    chosen, rejected = chosen.double().cpu(), rejected.double().cpu()
    values = torch.stack([torch.ones(len(pairs), dtype=torch.float64), chosen, rejected,
                          (chosen > rejected).double()], dim=1)
    stats.index_add_(0, rows, values)


def new_stats() -> torch.Tensor:
    return torch.zeros(len(languages.CODES), len(STATS), dtype=torch.float64)


def summarise_stats(stats: torch.Tensor) -> dict[str, Any]:
    """Mean rewards of chosen and rejected answers, their margin and how often chosen wins: overall (as flat
    `rewards/...` numbers, for the charts) and per language."""
    def means(row: torch.Tensor) -> dict[str, float]:
        count = float(row[0])
        chosen, rejected, correct = (float(value) / count for value in row[1:])
        return {"chosen": round(chosen, 6), "rejected": round(rejected, 6), "margin": round(chosen - rejected, 6),
                "accuracy": round(correct, 6), "pairs": int(count)}

    overall = means(stats.sum(dim=0))
    per_lang = {languages.CODES[row]: means(stats[row]) for row in range(len(stats)) if stats[row, 0] > 0}
    return {**{f"rewards/{key}": value for key, value in overall.items() if key != "pairs"},
            "rewards_per_lang": per_lang}
