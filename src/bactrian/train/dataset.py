"""Turn instruction records into training examples: tokenize and mask, split, sample languages, batch, pack."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DataError
from ..prompts import PromptTemplate
from ..records import Record

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
VAL_SPLIT_SEED = 42  # the original's validation split seed


@dataclass(frozen=True)
class Example:
    id: str
    lang: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def num_targets(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def tokenize(record: Record, tokenizer: Any, template: PromptTemplate, cutoff_len: int,
             train_on_inputs: bool) -> Example:
    """prompt + output + EOS. Prompt tokens get label -100 unless train_on_inputs; the output and its EOS are
    always learned. The prompt and the output are tokenized apart, so the mask boundary is exact."""
    prompt = template.render(record.instruction, record.input, tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=not template.uses_chat_template)["input_ids"]
    output_ids = tokenizer(record.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + output_ids)[:cutoff_len]
    prompt_labels = list(prompt_ids) if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
    labels = (prompt_labels + output_ids)[:cutoff_len]
    return Example(record.id, record.lang, tuple(input_ids), tuple(labels))


def tokenize_all(records: list[Record], tokenizer: Any, template: PromptTemplate, cutoff_len: int,
                 train_on_inputs: bool) -> list[Example]:
    examples = [tokenize(record, tokenizer, template, cutoff_len, train_on_inputs) for record in records]
    useless = [example.id for example in examples if example.num_targets == 0]
    if useless:
        log.warning("%d example(s) have prompts of %d tokens or more and nothing left to learn; they are "
                    "left out (first: %s). Raise --cutoff_len to keep them.", len(useless), cutoff_len, useless[0])
    return [example for example in examples if example.num_targets > 0]


def stratified_split(records: list[Record], val_set_size: int,
                     seed: int = VAL_SPLIT_SEED) -> tuple[list[Record], list[Record]]:
    """Hold out `val_set_size` records, each language in proportion to its share (largest remainder)."""
    if val_set_size <= 0:
        return list(records), []
    if val_set_size >= len(records):
        raise DataError(f"--val_set_size {val_set_size} leaves no training data ({len(records)} records in all).")
    by_lang: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_lang[record.lang].append(index)
    quotas = _largest_remainder({lang: len(ids) for lang, ids in by_lang.items()}, val_set_size)
    rng = random.Random(seed)
    held_out: set[int] = set()
    for lang in sorted(by_lang):
        held_out.update(rng.sample(by_lang[lang], quotas[lang]))
    train = [record for index, record in enumerate(records) if index not in held_out]
    val = [record for index, record in enumerate(records) if index in held_out]
    return train, val


def _largest_remainder(weights: dict[str, float], total: int) -> dict[str, int]:
    norm = sum(weights.values())
    exact = {key: total * weight / norm for key, weight in weights.items()}
    quotas = {key: math.floor(value) for key, value in exact.items()}
    by_remainder = sorted(exact, key=lambda key: (quotas[key] - exact[key], key))
    for key in by_remainder[: total - sum(quotas.values())]:
        quotas[key] += 1
    return quotas


def language_probabilities(counts: dict[str, int], temperature: float) -> dict[str, float]:
    """p(lang) proportional to n^(1/T): T = 1 keeps the data's mix, larger T flattens it toward uniform."""
    if temperature <= 0:
        raise DataError(f"--lang_temperature must be positive, got {temperature}.")
    weights = {lang: count ** (1.0 / temperature) for lang, count in counts.items()}
    norm = sum(weights.values())
    return {lang: weight / norm for lang, weight in weights.items()}


def epoch_order(examples: list[Example], temperature: float, seed: int, epoch: int) -> list[int]:
    """The example indices of one epoch, deterministic in (seed, epoch). With T != 1 each language gets its
    temperature quota of the epoch, drawn without repeats until a language's examples run out."""
    rng = random.Random(f"{seed}-{epoch}")
    if temperature == 1.0:
        order = list(range(len(examples)))
        rng.shuffle(order)
        return order
    by_lang: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        by_lang[example.lang].append(index)
    probabilities = language_probabilities({lang: len(ids) for lang, ids in by_lang.items()}, temperature)
    quotas = _largest_remainder(probabilities, len(examples))
    order: list[int] = []
    for lang in sorted(by_lang):
        order.extend(_draw(by_lang[lang], quotas[lang], rng))
    rng.shuffle(order)
    return order


def _draw(pool: list[int], count: int, rng: random.Random) -> list[int]:
    drawn: list[int] = []
    while len(drawn) < count:
        cycle = list(pool)
        rng.shuffle(cycle)
        drawn.extend(cycle[: count - len(drawn)])
    return drawn


def global_batches(examples: list[Example], batch_size: int, temperature: float, seed: int,
                   start_step: int, total_steps: int) -> list[tuple[int, list[int]]]:
    """(step, example indices) for steps start_step..total_steps-1; an epoch's last, short batch is kept."""
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    orders: dict[int, list[int]] = {}
    schedule: list[tuple[int, list[int]]] = []
    for step in range(start_step, total_steps):
        epoch, position = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders[epoch] = epoch_order(examples, temperature, seed, epoch)
        schedule.append((step, orders[epoch][position * batch_size:(position + 1) * batch_size]))
    return schedule


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [rows, length]
    labels: torch.Tensor  # [rows, length]
    position_ids: torch.Tensor  # [rows, length], restarting at 0 for each packed example
    attention_mask: torch.Tensor | None  # None when packed: the mask comes from position_ids
    example_index: torch.Tensor  # [rows, length], which example each token belongs to (-1 for padding)
    examples: list[Example]  # example_index numbers these

    @property
    def num_tokens(self) -> int:
        return int((self.example_index >= 0).sum())


def micro_batches(examples: list[Example], micro_batch_size: int, pad_id: int, packing: bool,
                  row_tokens: int, group_by_length: bool) -> list[MicroBatch]:
    """Split one rank's share of a global batch into micro-batches, padded or packed into rows of at most
    `row_tokens` tokens (training packs to --cutoff_len)."""
    if packing:
        rows = pack_rows([len(example.input_ids) for example in examples], row_tokens)
    else:
        order = list(range(len(examples)))
        if group_by_length:
            order.sort(key=lambda index: len(examples[index].input_ids), reverse=True)
        rows = [[index] for index in order]
    return [
        collate([[examples[index] for index in row] for row in rows[start:start + micro_batch_size]], pad_id,
                packed=packing)
        for start in range(0, len(rows), micro_batch_size)
    ]


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: group example indices into rows of at most `capacity` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((row for row, free in enumerate(room) if free >= lengths[index]), None)
        if slot is None:
            rows.append([index])
            room.append(capacity - lengths[index])
        else:
            rows[slot].append(index)
            room[slot] -= lengths[index]
    return rows


def collate(rows: list[list[Example]], pad_id: int, packed: bool) -> MicroBatch:
    """Each row holds one example (padded batch) or several (packed). Padding goes on the right; in a packed
    row it forms its own segment so no real token attends to it."""
    width = max(sum(len(example.input_ids) for example in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    example_index = torch.full(shape, -1, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    ordered = [example for row in rows for example in row]
    number = 0
    for row_index, row in enumerate(rows):
        start = 0
        for example in row:
            end = start + len(example.input_ids)
            input_ids[row_index, start:end] = torch.tensor(example.input_ids)
            labels[row_index, start:end] = torch.tensor(example.labels)
            position_ids[row_index, start:end] = torch.arange(end - start)
            example_index[row_index, start:end] = number
            attention_mask[row_index, start:end] = 1
            number += 1
            start = end
        position_ids[row_index, start:] = torch.arange(width - start)
    return MicroBatch(input_ids, labels, position_ids, None if packed else attention_mask, example_index, ordered)


def language_counts(examples: list[Example]) -> dict[str, int]:
    return dict(sorted(Counter(example.lang for example in examples).items()))
