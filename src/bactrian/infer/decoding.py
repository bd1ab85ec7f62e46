"""Continuous batching: the rows being decoded share one KV cache; a row joins at any step and leaves when done.

New rows are prefilled apart (left-padded together, in chunks of at most `prefill_tokens` tokens so that a long
prompt delays the running rows by one chunk at a time), then merged into the running batch: the shorter cache
is padded on the left with masked slots and the two are concatenated along the batch. A finished or cancelled
row is dropped from the cache at once, and columns that only padding uses any more are trimmed.

Each row keeps its own adapter (PEFT `adapter_names`), sampling settings and random generator, so its tokens
do not depend on what it is batched with. A failure that belongs to one row (its sampling) fails that row
only; a failing forward pass fails the rows that took part in it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import ModelError
from .protocols import DecodingModel
from .requests import Delta, Request, cut_at_stop, safe_prefix

log = logging.getLogger(__name__)


class Row:
    """One request's decoding state."""

    def __init__(self, request: Request, index: int, device: torch.device | str):
        self.request, self.index = request, index
        self.tokens: list[int] = []
        self.emitted = ""
        self.finished: str | None = None
        self.generator = None
        if not request.params.greedy:
            self.generator = torch.Generator(device=device)
            seed = request.params.seed
            self.generator.manual_seed(seed % 2**64 if seed is not None else int(torch.randint(0, 2**62, (1,))))

    def fail(self, message: str) -> Delta:
        self.finished = "error"
        return Delta(self.index, "", "error", len(self.tokens), error=message)


class _Prefill:
    """New rows being prefilled together, a chunk of columns at a time, in their own cache."""

    def __init__(self, model: DecodingModel, rows: list[Row]):
        from transformers import DynamicCache

        width = max(len(row.request.prompt_ids) for row in rows)
        pad = model.tokenizer.pad_token_id
        self.rows = rows
        self.ids = torch.tensor([[pad] * (width - len(r.request.prompt_ids)) + r.request.prompt_ids for r in rows])
        self.mask = torch.tensor([[0] * (width - len(r.request.prompt_ids)) + [1] * len(r.request.prompt_ids)
                                  for r in rows])
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache()  # full-length layers: caches of different rows can then be merged
        self.done = 0

    def step(self, model: DecodingModel, budget: int) -> torch.Tensor | None:
        """Prefill the next chunk; the last position's logits once the whole prompt is in."""
        columns = max(16, budget // len(self.rows))
        end = min(self.done + columns, self.ids.shape[1])
        device = model.device
        logits = model.forward(self.ids[:, self.done:end].to(device), self.mask[:, :end].to(device),
                               self.positions[:, self.done:end].to(device), self.cache, adapters_of(self.rows))
        self.done = end
        check_cache_holds(self.cache, end)
        return logits if end == self.ids.shape[1] else None


def check_cache_holds(cache: Any, tokens: int) -> None:
    """After a prefill: the cache must hold the prompt, or every later step decodes without its context."""
    held = cache.get_seq_length()
    if held != tokens:
        import transformers

        raise ModelError(f"the KV cache holds {held} of the prompt's {tokens} tokens after the prefill: the model's "
                         f"forward in transformers {transformers.__version__} did not fill it. Install a "
                         "transformers version bactrian supports (see pyproject.toml).")


class DecodeBatch:
    """The running rows and their shared cache. `admit` queues new rows; each `step` advances every row by one
    token and the prefill by one chunk, yielding the deltas."""

    def __init__(self, model: DecodingModel, prefill_tokens: int = 512):
        self.model, self.prefill_tokens = model, prefill_tokens
        self.rows: list[Row] = []
        self.waiting: list[Row] = []
        self.prefill: _Prefill | None = None
        self.cache: Any = None
        self.mask = self.positions = self.next_ids = None
        self.eos = model.eos_token_ids

    def __len__(self) -> int:
        return len(self.rows) + len(self.waiting) + (len(self.prefill.rows) if self.prefill else 0)

    def admit(self, rows: list[Row]) -> None:
        self.waiting.extend(rows)

    def step(self) -> Iterator[Delta]:
        yield from self._cancel_gone()
        if self.rows:
            yield from self._guarded(self.rows, self._decode)
        if self.prefill is None and self.waiting:
            self.prefill, self.waiting = _Prefill(self.model, self.waiting), []
        if self.prefill is not None:
            yield from self._guarded(self.prefill.rows, self._prefill_chunk)
        self._drop_finished()

    def _guarded(self, rows: list[Row], work) -> Iterator[Delta]:
        try:
            yield from work()
        except Exception as exc:  # a failing forward pass fails the rows in it, not the server
            log.warning("decoding failed for %d row(s): %s", len(rows), exc)
            yield from (row.fail(f"generation failed: {exc}") for row in rows if not row.finished)
            if self.prefill is not None and rows is self.prefill.rows:
                self.prefill = None

    def _decode(self) -> Iterator[Delta]:
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        logits = self.model.forward(self.next_ids, self.mask, self.positions, self.cache, adapters_of(self.rows))
        self.positions = self.positions + 1
        chosen = yield from self._advance(self.rows, logits)
        self.next_ids = self._as_column(chosen)

    def _prefill_chunk(self) -> Iterator[Delta]:
        prefill = self.prefill
        logits = prefill.step(self.model, self.prefill_tokens)
        if logits is None:
            return
        self.prefill = None
        chosen = yield from self._advance(prefill.rows, logits)
        device = self.model.device
        self._merge(prefill.rows, prefill.cache, prefill.mask.to(device), prefill.positions[:, -1:].to(device) + 1,
                    self._as_column(chosen))

    def _advance(self, rows: list[Row], logits: torch.Tensor):
        """Choose each row's next token from its logits and emit what can be shown; returns the tokens."""
        last = logits[:, -1].float()
        chosen = last.argmax(-1).tolist()  # greedy rows' tokens, for all rows at once
        for i, row in enumerate(rows):
            if row.finished or row.request.params.greedy:
                continue
            try:
                chosen[i] = choose_token(row, last[i])
            except Exception as exc:  # this row's sampling only
                chosen[i] = 0
                yield row.fail(f"sampling failed: {exc}")
        for row, token in zip(rows, chosen):
            if not row.finished:
                yield from self._emit(row, token)
        return chosen

    def _as_column(self, tokens: list[int]) -> torch.Tensor:
        return torch.tensor(tokens, device=self.model.device).view(-1, 1)

    def _emit(self, row: Row, token: int) -> Iterator[Delta]:
        params = row.request.params
        if token in self.eos:
            row.finished = "stop"
        else:
            row.tokens.append(token)
        text = self.model.tokenizer.decode(row.tokens, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        if stopped:
            row.finished = "stop"
        elif not row.finished and len(row.tokens) >= params.max_new_tokens:
            row.finished = "length"
        ready = text if row.finished else safe_prefix(text, params.stop)
        delta, row.emitted = ready[len(row.emitted):], ready
        if delta or row.finished:
            yield Delta(row.index, delta, row.finished, len(row.tokens) + (1 if token in self.eos else 0))

    def _cancel_gone(self) -> Iterator[Delta]:
        groups = [self.rows, self.waiting] + ([self.prefill.rows] if self.prefill else [])
        for row in (row for group in groups for row in group):
            if not row.finished and row.request.cancelled.is_set():
                row.finished = "cancelled"
                yield Delta(row.index, "", "cancelled", len(row.tokens))
        self.waiting = [row for row in self.waiting if not row.finished]
        if self.prefill and all(row.finished for row in self.prefill.rows):
            self.prefill = None

    # -- the shared cache ---------------------------------------------------------------------------------
    def _merge(self, rows: list[Row], cache: Any, mask: torch.Tensor, positions: torch.Tensor,
               next_ids: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            self.positions, self.next_ids = positions, next_ids
            return
        # Rows are left-padded: padding the shorter cache on the left with masked (zero) slots keeps every row's
        # newest token in the last column, so one step appends one column to all of them.
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
        self.positions = torch.cat([self.positions, positions])
        self.next_ids = torch.cat([self.next_ids, next_ids])
        self.rows.extend(rows)

    def _drop_finished(self) -> None:
        keep = [i for i, row in enumerate(self.rows) if not row.finished]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask, self.positions, self.next_ids = [], None, None, None, None
            return
        index = torch.tensor(keep, device=self.mask.device)
        # Positions come from each row's own count (not the column), so dropping all-padding columns on the left
        # changes no row's attention or positions: the cache only shrinks.
        first = int((self.mask[index].sum(0) > 0).nonzero()[0])  # columns before it are padding in every row
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.mask, self.positions, self.next_ids = self.mask[index, first:], self.positions[index], self.next_ids[index]
        self.rows = [self.rows[i] for i in keep]


def adapters_of(rows: list[Row]) -> list[str]:
    return [row.request.adapter for row in rows]


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


# -- sampling -------------------------------------------------------------------------------------------------
def choose_token(row: Row, logits: torch.Tensor) -> int:
    """A token sampled with the row's generator from the filtered distribution (rows at temperatures of at least
    GREEDY_BELOW). Safe for any temperature, top_k and top_p the API accepts: non-finite probabilities fall back
    to the greedy token."""
    params = row.request.params
    scaled = (logits - logits.max()) / params.temperature
    probs = _filtered_probs(scaled, params.top_k, params.top_p)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        return int(logits.argmax())
    return int(torch.multinomial(probs, 1, generator=row.generator))


def _filtered_probs(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k and top_k < logits.shape[-1]:
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return probs / probs.sum()
