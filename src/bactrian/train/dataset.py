"""Training examples: split, sample languages, batch, pack (tokenizing is `tokenize.py`, its cache `token_cache.py`).
Splitting, sampling and the batch schedule work on the rows' languages alone (an index), never on the
examples themselves, so they cost the same memory whatever the rows hold."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError

IGNORE_INDEX = -100
VAL_SPLIT_SEED = 42  # the original's validation split seed


@dataclass(frozen=True)
class Example:
    id: str
    lang: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @classmethod
    def from_tokens(cls, example_id: str, lang: str, input_ids: list[int], masked: int) -> Example:
        """An example whose first `masked` tokens are not learned."""
        labels = [IGNORE_INDEX] * masked + list(input_ids[masked:])
        return cls(example_id, lang, tuple(input_ids), tuple(labels))

    @property
    def num_targets(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass(frozen=True)
class Pair:
    """A preference example: the prompt followed by the chosen answer, and by the rejected one."""

    id: str
    lang: str
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    prompt_len: int

    def chosen(self, learn_prompt: bool = False) -> Example:
        return Example.from_tokens(f"{self.id}#chosen", self.lang, list(self.chosen_ids),
                                   0 if learn_prompt else self.prompt_len)

    def rejected(self) -> Example:
        return Example.from_tokens(f"{self.id}#rejected", self.lang, list(self.rejected_ids), self.prompt_len)


def stratified_split(langs: np.ndarray, val_set_size: int, seed: int = VAL_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and the `val_set_size` held-out rows, each language held out in proportion to
    its share (largest remainder); `langs` holds each row's language (any comparable values)."""
    everything = np.arange(len(langs))
    if val_set_size <= 0:
        return everything, everything[:0]
    if val_set_size >= len(langs):
        raise DataError(f"--val_set_size {val_set_size} leaves no training data ({len(langs)} rows in all).")
    values, counts = np.unique(langs, return_counts=True)
    quotas = _largest_remainder({str(value): int(count) for value, count in zip(values, counts)}, val_set_size)
    rng = random.Random(seed)
    held_out = []
    for value in sorted(values, key=str):
        pool = np.flatnonzero(langs == value)
        held_out.extend(pool[rng.sample(range(len(pool)), quotas[str(value)])])
    val = np.sort(np.asarray(held_out, dtype=np.int64))
    return np.setdiff1d(everything, val, assume_unique=True), val


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


def epoch_order(langs: np.ndarray, temperature: float, seed: int, epoch: int) -> np.ndarray:
    """The row positions of one epoch, deterministic in (seed, epoch), from the rows' languages alone. With T != 1
    each language gets its temperature quota of the epoch, drawn without repeats until its rows run out."""
    rng = np.random.default_rng([seed, epoch])
    if temperature == 1.0:
        return rng.permutation(len(langs))
    values, counts = np.unique(langs, return_counts=True)
    probabilities = language_probabilities({str(v): int(n) for v, n in zip(values, counts)}, temperature)
    quotas = _largest_remainder(probabilities, len(langs))
    drawn = [_draw(np.flatnonzero(langs == value), quotas[str(value)], rng) for value in sorted(values, key=str)]
    return rng.permutation(np.concatenate(drawn))


def _draw(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    cycles = [rng.permutation(pool) for _ in range(math.ceil(count / len(pool)))]
    return np.concatenate(cycles)[:count]


def global_batches(langs: np.ndarray, batch_size: int, temperature: float, seed: int, start_step: int,
                   total_steps: int) -> Iterator[tuple[int, np.ndarray]]:
    """(step, row positions) for steps start_step..total_steps-1, made as they are needed (one epoch's order in
    memory at a time); an epoch's last, short batch is kept."""
    steps_per_epoch = math.ceil(len(langs) / batch_size)
    order, order_epoch = None, None
    for step in range(start_step, total_steps):
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(langs, temperature, seed, epoch), epoch
        yield step, order[position * batch_size:(position + 1) * batch_size]


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

