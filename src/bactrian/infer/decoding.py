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
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModelError

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger(__name__)

GREEDY_BELOW = 1e-5  # temperatures below this decode greedily (vLLM's rule): dividing by them overflows
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    num_beams: int = 1


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str = "base"
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_text: str = ""  # the rendered prompt, for backends that take text (serve --upstream)


@dataclass
class Delta:
    """A piece of a request's output: new text, and when it is done, why (stop, length, cancelled or error)."""

    index: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    status: int = 500  # the HTTP status an error maps to


class Row:
    """One request's decoding state."""

    def __init__(self, request: Request, index: int, device: torch.device | str):
        self.request, self.index = request, index
        self.tokens: list[int] = []
        self.emitted = ""
        self.finished: str | None = None
        self.generator = None
        if request.params.temperature >= GREEDY_BELOW:
            self.generator = torch.Generator(device=device)
            seed = request.params.seed
            self.generator.manual_seed(seed % 2**64 if seed is not None else int(torch.randint(0, 2**62, (1,))))

    def fail(self, message: str) -> Delta:
        self.finished = "error"
        return Delta(self.index, "", "error", len(self.tokens), error=message)


class _Prefill:
    """New rows being prefilled together, a chunk of columns at a time, in their own cache."""

    def __init__(self, engine: Engine, rows: list[Row]):
        from transformers import DynamicCache

        width = max(len(row.request.prompt_ids) for row in rows)
        pad = engine.tokenizer.pad_token_id
        self.rows = rows
        self.ids = torch.tensor([[pad] * (width - len(r.request.prompt_ids)) + r.request.prompt_ids for r in rows])
        self.mask = torch.tensor([[0] * (width - len(r.request.prompt_ids)) + [1] * len(r.request.prompt_ids)
                                  for r in rows])
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache()  # full-length layers: caches of different rows can then be merged
        self.done = 0

    def step(self, engine: Engine, budget: int) -> torch.Tensor | None:
        """Prefill the next chunk; the last position's logits once the whole prompt is in."""
        columns = max(16, budget // len(self.rows))
        end = min(self.done + columns, self.ids.shape[1])
        device = engine.loaded.device
        logits = engine.forward(self.ids[:, self.done:end].to(device), self.mask[:, :end].to(device),
                                self.positions[:, self.done:end].to(device), self.cache, self.rows)
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

    def __init__(self, engine: Engine, prefill_tokens: int = 512):
        self.engine, self.prefill_tokens = engine, prefill_tokens
        self.rows: list[Row] = []
        self.waiting: list[Row] = []
        self.prefill: _Prefill | None = None
        self.cache: Any = None
        self.mask = self.positions = self.next_ids = None
        self.eos = {engine.tokenizer.eos_token_id, *_extra_eos(engine)}

    def __len__(self) -> int:
        return len(self.rows) + len(self.waiting) + (len(self.prefill.rows) if self.prefill else 0)

    def admit(self, rows: list[Row]) -> None:
        self.waiting.extend(rows)

    def step(self) -> Iterator[Delta]:
        yield from self._cancel_gone()
        if self.rows:
            yield from self._guarded(self.rows, self._decode)
        if self.prefill is None and self.waiting:
            self.prefill, self.waiting = _Prefill(self.engine, self.waiting), []
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
        logits = self.engine.forward(self.next_ids, self.mask, self.positions, self.cache, self.rows)
        self.positions = self.positions + 1
        chosen = yield from self._advance(self.rows, logits)
        self.next_ids = self._as_column(chosen)

    def _prefill_chunk(self) -> Iterator[Delta]:
        prefill = self.prefill
        logits = prefill.step(self.engine, self.prefill_tokens)
        if logits is None:
            return
        self.prefill = None
        chosen = yield from self._advance(prefill.rows, logits)
        device = self.engine.loaded.device
        self._merge(prefill.rows, prefill.cache, prefill.mask.to(device), prefill.positions[:, -1:].to(device) + 1,
                    self._as_column(chosen))

    def _advance(self, rows: list[Row], logits: torch.Tensor):
        """Choose each row's next token from its logits and emit what can be shown; returns the tokens."""
        last = logits[:, -1].float()
        chosen = last.argmax(-1).tolist()  # greedy rows' tokens, for all rows at once
        for i, row in enumerate(rows):
            if row.finished or row.request.params.temperature < GREEDY_BELOW:
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
        return torch.tensor(tokens, device=self.engine.loaded.device).view(-1, 1)

    def _emit(self, row: Row, token: int) -> Iterator[Delta]:
        params = row.request.params
        if token in self.eos:
            row.finished = "stop"
        else:
            row.tokens.append(token)
        text = self.engine.tokenizer.decode(row.tokens, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        if stopped:
            row.finished = "stop"
        elif not row.finished and len(row.tokens) >= params.max_new_tokens:
            row.finished = "length"
        ready = text if row.finished else _safe_prefix(text, params.stop)
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
        first = int((self.mask[index].sum(0) > 0).nonzero()[0])  # columns before it are padding in every row
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.mask, self.positions, self.next_ids = self.mask[index, first:], self.positions[index], self.next_ids[index]
        self.rows = [self.rows[i] for i in keep]


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


# -- text -----------------------------------------------------------------------------------------------------
def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    return (text[: min(positions)], True) if positions else (text, False)


def _safe_prefix(text: str, stops: list[str]) -> str:
    """Text that can be shown now: no half-decoded character, no possible start of a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return text[: len(text) - hold]


def _extra_eos(engine: Engine) -> list[int]:
    config_eos = getattr(engine.model.generation_config, "eos_token_id", None)
    if config_eos is None:
        return []
    return list(config_eos) if isinstance(config_eos, (list, tuple)) else [config_eos]
