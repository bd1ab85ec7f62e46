"""The training objective, chosen once from --method: SFT (cross-entropy on the answers), DPO or ORPO (on
preference pairs). An `Objective` runs the forward and backward passes of this process's share of a global
batch, micro-batch by micro-batch, and computes the eval metrics of the validation split; the loop around it is
the same for every method.

Every loss is divided by a count over the GLOBAL batch (SFT: its target tokens; DPO and ORPO: its pairs, ORPO's
NLL term its chosen tokens), so summing the shares of every micro-batch and process gives the step's loss, and
its gradient, whatever the micro-batching, packing or number of processes."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any

import torch

from ..models import auto_dtype
from . import dataset as ds
from . import preference
from .config import FinetuneConfig
from .distributed import DistributedContext
from .loss import token_losses

log = logging.getLogger(__name__)


def uses_bf16_autocast(setting: str, device: torch.device) -> bool:
    """--bf16: `auto` autocasts where the dtype rule picks bf16 (logged with its reason): on such a GPU too, so the
    parts kept in fp32 (LoRA's matrices; a quantized base's norms, embeddings and head, which PEFT upcasts) compute
    in bf16 as in any bf16 QLoRA run, not in fp32 at twice the activation memory."""
    if setting != "auto":
        return setting == "true"
    choice = auto_dtype(device)
    log.info("bf16 auto: autocast %s, %s", "on" if choice.dtype == torch.bfloat16 else "off", choice.reason)
    return choice.dtype == torch.bfloat16


class Objective:
    """What a method computes; subclasses give `gradients` and `evaluate`."""

    def __init__(self, config: FinetuneConfig, context: DistributedContext, model: Any, pad_id: int):
        self.config, self.context, self.model, self.pad_id = config, context, model, pad_id
        device = next(model.parameters()).device
        self.device_type = device.type
        self.autocast = uses_bf16_autocast(config.bf16, device)
        self.step_log: dict[str, Any] = {}  # what the last step adds to its log entry (DPO / ORPO: its rewards)

    def gradients(self, share: list[Any], batch: list[Any]) -> tuple[torch.Tensor, int]:
        """Backward passes over `share` (this process's part of `batch`); returns its part of the step's loss
        (float64, on the CPU) and the tokens it saw."""
        raise NotImplementedError

    def evaluate(self, val: list[Any]) -> dict[str, Any]:
        """The eval metrics of the validation split, summed over every process."""
        raise NotImplementedError

    def forward_precision(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast)

    def micro_batches(self, examples: list[ds.Example], group_by_length: bool) -> list[ds.MicroBatch]:
        config = self.config
        return ds.micro_batches(examples, config.micro_batch_size, self.pad_id, config.packing, config.cutoff_len,
                                group_by_length)

    def eval_loss(self, examples: list[ds.Example]) -> dict[str, Any]:
        """Mean loss of the examples' target tokens, per language and overall (token-weighted)."""
        codes = sorted({example.lang for example in examples})
        sums = torch.zeros(len(codes), 2, dtype=torch.float64)  # [loss sum, target tokens] per language
        share = examples[self.context.rank::self.context.world_size]
        for micro in self.micro_batches(share, group_by_length=True):
            with self.forward_precision():
                losses, owners = token_losses(self.model, micro)
            for loss, owner in zip(losses.double().cpu().tolist(), owners.cpu().tolist()):
                row = codes.index(micro.examples[owner].lang)
                sums[row, 0] += loss
                sums[row, 1] += 1
        self.context.sum_(sums)
        per_lang = {code: round(float(sums[i, 0] / sums[i, 1]), 6) for i, code in enumerate(codes) if sums[i, 1]}
        overall = float(sums[:, 0].sum() / sums[:, 1].sum())
        return {"eval_loss": round(overall, 6), "eval_loss_per_lang": per_lang}


class SFT(Objective):
    """Cross-entropy of the answer tokens (of every token with --train_on_inputs)."""

    def gradients(self, share: list[ds.Example], batch: list[ds.Example]) -> tuple[torch.Tensor, int]:
        global_targets = sum(example.num_targets for example in batch)
        loss_sum = torch.zeros((), dtype=torch.float64)
        tokens = 0
        for micro in self.micro_batches(share, self.config.group_by_length):
            with self.forward_precision():
                losses, _ = token_losses(self.model, micro)
            # divided by the whole global batch's targets (every rank's share): summed over micro-batches and
            # ranks, the gradient is the mean over the global batch, whatever the micro-batching or world size
            (losses.float().sum() / global_targets).backward()
            loss_sum += losses.detach().double().sum().cpu() / global_targets
            tokens += micro.num_tokens
        return loss_sum, tokens

    def evaluate(self, val: list[ds.Example]) -> dict[str, Any]:
        return self.eval_loss(val)


class PreferenceObjective(Objective):
    """DPO and ORPO: micro-batches of pairs (the chosen and the rejected sequences of each), the rewards of the
    step kept for its log. Their eval loss is that of the chosen answers, so adapters compare whatever trained
    them, with the validation pairs' rewards beside it."""

    learn_prompt = False  # whether the NLL term learns the chosen sequence's prompt too (ORPO only)

    def gradients(self, share: list[ds.Pair], batch: list[ds.Pair]) -> tuple[torch.Tensor, int]:
        nll_tokens = sum(preference.nll_tokens(pair, self.learn_prompt) for pair in batch)
        loss_sum, tokens, stats = torch.zeros((), dtype=torch.float64), 0, preference.new_stats()
        for pairs in self._micro_pairs(share):
            loss, chosen, rejected, micro_tokens = self._pair_losses(pairs, self.learn_prompt, len(batch),
                                                                     nll_tokens)
            loss.backward()
            loss_sum += loss.detach().double().cpu()
            tokens += micro_tokens
            preference.add_stats(stats, pairs, chosen, rejected)
        self.context.sum_(stats)
        self.step_log = preference.summarise_stats(stats)
        return loss_sum, tokens

    def evaluate(self, val: list[ds.Pair]) -> dict[str, Any]:
        rewards = preference.new_stats()
        for pairs in self._micro_pairs(val[self.context.rank::self.context.world_size]):
            _, chosen, rejected, _ = self._pair_losses(pairs, False, 1, 1)
            preference.add_stats(rewards, pairs, chosen, rejected)
        self.context.sum_(rewards)
        summary = preference.summarise_stats(rewards)
        return {**self.eval_loss([pair.chosen() for pair in val]),
                **{f"eval_{key}": value for key, value in summary.items()}}

    def _micro_pairs(self, pairs: list[ds.Pair]) -> list[list[ds.Pair]]:
        size = self.config.micro_batch_size
        return [pairs[start:start + size] for start in range(0, len(pairs), size)]

    def _pair_losses(self, pairs: list[ds.Pair], learn_prompt: bool, global_pairs: int,
                     nll_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """This micro-batch's share of the step's loss, the pairs' rewards, and its tokens."""
        micro, slots, starts = preference.pair_batch(pairs, self.pad_id, self.config.packing, self.config.cutoff_len,
                                                     learn_prompt)
        with self.forward_precision():
            policy = preference.forward_pairs(self.model, micro, slots, starts, len(pairs))
            reference = self._reference(micro, slots, starts, len(pairs))
        loss, chosen, rejected = self._loss(policy, reference, global_pairs, nll_tokens)
        return loss, chosen, rejected, micro.num_tokens

    def _reference(self, micro: ds.MicroBatch, slots: torch.Tensor, starts: torch.Tensor,
                   pairs: int) -> preference.PairOutputs | None:
        """The reference model's outputs on the pairs (DPO), or None."""
        return None

    def _loss(self, policy: preference.PairOutputs, reference: preference.PairOutputs | None, global_pairs: int,
              nll_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class DPO(PreferenceObjective):
    def _reference(self, micro: ds.MicroBatch, slots: torch.Tensor, starts: torch.Tensor,
                   pairs: int) -> preference.PairOutputs:
        with preference.reference_model(self.model, preference.REFERENCE in self.model.peft_config):
            return preference.forward_pairs(self.model, micro, slots, starts, pairs)

    def _loss(self, policy: preference.PairOutputs, reference: preference.PairOutputs | None, global_pairs: int,
              nll_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        losses, chosen, rejected = preference.dpo_losses(policy, reference, self.config.beta)
        return losses.sum() / global_pairs, chosen, rejected


class ORPO(PreferenceObjective):
    @property
    def learn_prompt(self) -> bool:  # with --train_on_inputs, its NLL term learns the prompt too
        return self.config.train_on_inputs

    def _loss(self, policy: preference.PairOutputs, reference: preference.PairOutputs | None, global_pairs: int,
              nll_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        losses, chosen, rejected = preference.orpo_losses(policy, self.config.beta)
        return losses.sum() / global_pairs + policy.nll_sum / nll_tokens, chosen, rejected


OBJECTIVES: dict[str, type[Objective]] = {"sft": SFT, "dpo": DPO, "orpo": ORPO}


def objective_for(config: FinetuneConfig, context: DistributedContext, model: Any, pad_id: int) -> Objective:
    """The objective of --method."""
    return OBJECTIVES[config.method](config, context, model, pad_id)
