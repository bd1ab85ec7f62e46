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
from .guard import GuardedAnswer, ban
from .protocols import DecodingModel
from .requests import Delta, Request, SamplingParams, cut_at_stop, safe_prefix
from .speculation import Drafter

log = logging.getLogger(__name__)

DETOKENIZE_CONTEXT = 5  # tokens decoded again before the new ones (TGI's and vLLM's incremental detokenizers do)


class Row:
    """One request's decoding state."""

    def __init__(self, request: Request, index: int, device: torch.device | str):
        self.request, self.index = request, index
        self.tokens: list[int] = []
        self.emitted = ""
        self.finished: str | None = None
        self.settled, self.prefix, self.read = "", 0, 0  # incremental detokenization (see `text`)
        self.guard = GuardedAnswer(request.guard) if request.guard else None
        self.rewound = False  # the guard took back a piece: the row is prefilled again from what it kept
        self.drafter: Drafter | None = None  # its guesses of its next tokens, once it decodes alone (greedy)
        self.generator = None
        if not request.params.greedy:
            self.generator = torch.Generator(device=device)
            seed = request.params.seed
            self.generator.manual_seed(seed % 2**64 if seed is not None else int(torch.randint(0, 2**62, (1,))))

    def text(self, tokenizer: Any) -> str:
        """The decoded answer so far, as decoding every token at once gives it, in time linear in the answer:
        the text up to token `read` is settled; only the tokens from `prefix` (a few before `read`, for the
        context a tokenizer needs to decode spaces right) are decoded again, and the new text is what they add.
        A last character still incomplete (U+FFFD) stays unsettled until the tokens that complete it arrive."""
        before = tokenizer.decode(self.tokens[self.prefix:self.read], skip_special_tokens=True)
        window = tokenizer.decode(self.tokens[self.prefix:], skip_special_tokens=True)
        if not window.startswith(before):  # the context's text changed with what followed: decode it all
            return tokenizer.decode(self.tokens, skip_special_tokens=True)
        new = window[len(before):]
        if new.endswith("\ufffd"):
            return self.settled + new
        self.settled += new
        self.prefix, self.read = max(0, len(self.tokens) - DETOKENIZE_CONTEXT), len(self.tokens)
        return self.settled

    def draw(self) -> torch.Tensor:
        """A uniform number from the row's own generator: what its sampled token is chosen by (`sample`)."""
        return torch.rand((), generator=self.generator, device=self.generator.device)

    def rewind(self, kept: int, kept_text: str) -> None:
        """Take back every token after the first `kept` (whose text is `kept_text`), to decode them again."""
        del self.tokens[kept:]
        self.settled, self.prefix, self.read = kept_text, max(0, kept - DETOKENIZE_CONTEXT), kept
        self.finished, self.rewound = None, True

    def context(self) -> list[int]:
        """The tokens a prefill reads: the prompt, and what the row generated before it was preempted."""
        return self.request.prompt_ids + self.tokens

    def fail(self, message: str, status: int = 500) -> Delta:
        self.finished = "error"
        return Delta(self.index, "", "error", len(self.tokens), error=message, status=status)


class _Prefill:
    """New rows being prefilled together, a chunk of columns at a time, in their own cache."""

    def __init__(self, model: DecodingModel, rows: list[Row]):
        from transformers import DynamicCache

        contexts = [row.context() for row in rows]
        width = max(map(len, contexts))
        pad = model.tokenizer.pad_token_id
        self.rows = rows
        self.ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in contexts])
        self.mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in contexts])
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
        self.row_cap = 0  # after an out-of-memory: at most this many rows until the batch empties (0: no cap)
        self.prefill_rows = 0  # after an out-of-memory in a prefill: at most this many rows per prefill (0: all)

    def __len__(self) -> int:
        return len(self.rows) + len(self.waiting) + (len(self.prefill.rows) if self.prefill else 0)

    def admit(self, rows: list[Row]) -> None:
        self.waiting.extend(rows)

    def all_rows(self) -> list[Row]:
        """Every row the batch holds: decoding, being prefilled, waiting for a prefill."""
        return [*self.rows, *(self.prefill.rows if self.prefill else []), *self.waiting]

    def step(self) -> Iterator[Delta]:
        yield from self._cancel_gone()
        if self.rows:
            yield from self._guarded(self.rows, self._decode)
        if self.prefill is None and self.waiting and (taken := self._prefill_room()):
            self.prefill, self.waiting = _Prefill(self.model, self.waiting[:taken]), self.waiting[taken:]
        if self.prefill is not None:
            yield from self._guarded(self.prefill.rows, self._prefill_chunk)
        self._drop_finished()

    def _prefill_room(self) -> int:
        """How many waiting rows the next prefill takes."""
        if not self.rows:
            self.row_cap = 0
        room = len(self.waiting) if not self.row_cap else self.row_cap - len(self.rows)
        return max(0, min(room, self.prefill_rows or room))

    def _guarded(self, rows: list[Row], work) -> Iterator[Delta]:
        try:
            yield from work()
        except Exception as exc:  # a failing forward pass fails the rows in it, not the server
            prefilling = self.prefill is not None and rows is self.prefill.rows
            if isinstance(exc, _StepOutOfMemory) or (prefilling and out_of_memory(exc)):
                yield from self._out_of_memory(rows, exc, prefilling)
                return
            log.warning("decoding failed for %d row(s): %s", len(rows), exc)
            yield from (row.fail(f"generation failed: {exc}") for row in rows if not row.finished)
            if self.prefill is not None and rows is self.prefill.rows:
                self.prefill = None

    def _out_of_memory(self, rows: list[Row], exc: BaseException, prefilling: bool) -> Iterator[Delta]:
        """An out-of-memory fails no row that can fit: a prefill of several rows goes back to wait, taking half
        as many at a time; a decode step gives its newest row back to be prefilled again later (with what it has
        generated: it goes on where it was) and the batch holds one row fewer until it empties. Only a row alone
        that does not fit fails."""
        if prefilling:
            self.prefill = None
            if len(rows) > 1:
                self.prefill_rows = max(1, len(rows) // 2)
                self.waiting[:0] = rows
                return
        elif len(rows) > 1:
            self.row_cap = len(rows) - 1
            self.waiting.insert(0, rows[-1])
            self._keep([i for i in range(len(rows) - 1)])
            log.warning("out of memory at %d rows: one goes back to wait (%s)", len(rows), exc)
            return
        log.warning("out of memory with one row: %s", exc)
        yield rows[0].fail("the request does not fit in the memory left for decoding; send a shorter prompt or "
                           "a lower max_tokens", status=507)
        if rows is self.rows:
            self.rows, self.cache, self.mask, self.positions, self.next_ids = [], None, None, None, None

    def _decode(self) -> Iterator[Delta]:
        guesses = self._draft()
        width = 1 + len(guesses)
        ids = torch.cat([self.next_ids, self._as_column(guesses).T], dim=1) if guesses else self.next_ids
        mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), width)], dim=1)
        positions = self.positions + torch.arange(width, device=self.positions.device)
        try:
            logits = self.model.forward(ids, mask, positions, self.cache, adapters_of(self.rows), keep=width)
        except Exception as exc:
            if not out_of_memory(exc):
                raise
            self._trim_cache(self.mask.shape[1])  # the layers before the failure have the step's new columns
            if guesses:  # the guesses' positions did not fit: the row decodes plainly from now on
                self.rows[0].drafter.guesses = 0
                yield from self._decode()
                return
            raise _StepOutOfMemory(exc) from exc
        if guesses:
            yield from self._check(guesses, logits, mask)
        else:
            self.mask, self.positions = mask, self.positions + 1
            chosen = yield from self._advance(self.rows, logits)
            self.next_ids = self._as_column(chosen)
        self._requeue_rewound()

    def _draft(self) -> list[int]:
        """A lone greedy row's guesses of its next tokens (`speculation.py`); none while it shares the batch, has a
        language guard (which judges and bans token by token) or the model does not speculate."""
        row = self.rows[0]
        if len(self.rows) > 1 or not self.model.speculation or not row.request.params.greedy or row.guard is not None:
            return []
        row.drafter = row.drafter or Drafter()
        return row.drafter.propose(row.context(), most=row.request.params.max_new_tokens - len(row.tokens) - 1)

    def _check(self, guesses: list[int], logits: torch.Tensor, mask: torch.Tensor) -> Iterator[Delta]:
        """The lone row keeps the guesses its model chose itself, then the model's own next token (what plain
        decoding would have given, token for token); the cache keeps the columns of what was kept."""
        row, before = self.rows[0], self.mask.shape[1]
        chosen = logits[0].float().argmax(-1).tolist()
        agreed = next((i for i, (guess, token) in enumerate(zip(guesses, chosen)) if guess != token), len(guesses))
        row.drafter.taken(len(guesses), agreed)
        for token in chosen[:agreed + 1]:
            yield from self._emit(row, token)
            if row.finished:
                break
        kept = before + agreed + 1
        self._trim_cache(kept)
        self.mask, self.positions = mask[:, :kept], self.positions + agreed + 1
        self.next_ids = self._as_column([chosen[agreed]])

    def _trim_cache(self, columns: int) -> None:
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, :columns], layer.values[:, :, :columns]

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
        self._requeue_rewound()

    def _requeue_rewound(self) -> None:
        """Rows the guard rewound leave the batch and wait first in line to be prefilled again from what they kept
        (the others' cache is only trimmed)."""
        rewound = [row for row in self.rows if row.rewound]
        if not rewound:
            return
        self._keep([i for i, row in enumerate(self.rows) if not row.rewound])
        for row in rewound:
            row.rewound = False
        self.waiting[:0] = rewound

    def _advance(self, rows: list[Row], logits: torch.Tensor):
        """Choose each row's next token from its logits and emit what can be shown; returns the tokens."""
        last = logits[:, -1].float()
        for i, row in enumerate(rows):
            if row.guard is not None and not row.finished:
                ban(last[i], self.model.tokenizer, *row.guard.bans(len(row.tokens)))
        chosen = last.argmax(-1)  # greedy rows' tokens, for all rows at once
        draws: dict[int, torch.Tensor] = {}
        for i, row in enumerate(rows):
            if row.finished or row.request.params.greedy:
                continue
            try:
                draws[i] = row.draw()
            except Exception as exc:  # this row's sampling only
                yield row.fail(f"sampling failed: {exc}")
        if draws:  # every sampled row at once, on the device: no per-row sync
            index = torch.tensor(list(draws), device=last.device)
            params = [rows[i].request.params for i in draws]
            chosen[index] = sample(last[index], params, torch.stack(list(draws.values())))
        chosen = chosen.tolist()  # the step's one wait for the device
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
        full = row.text(self.model.tokenizer)
        text, stopped = cut_at_stop(full, params.stop)
        if stopped:
            row.finished = "stop"
        elif not row.finished and len(row.tokens) >= params.max_new_tokens:
            row.finished = "length"
        if row.guard is not None:
            if token not in self.eos:
                row.guard.record(full)
            if row.guard.review(text, row.tokens, finished=bool(row.finished)):
                row.rewind(row.guard.kept, text[:row.guard.kept_chars])
                return
            text = text if row.finished else text[:row.guard.kept_chars]  # the piece being checked waits
        ready = text if row.finished else safe_prefix(text, params.stop)
        delta, row.emitted = ready[len(row.emitted):], ready
        if delta or row.finished:
            yield Delta(row.index, delta, row.finished, len(row.tokens) + (1 if token in self.eos else 0),
                        guard=row.guard.report() if row.guard is not None and row.finished else None,
                        speculation=row.drafter.report() if row.drafter is not None and row.finished else None)

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
        if len(keep) < len(self.rows):
            self._keep(keep)

    def _keep(self, keep: list[int]) -> None:
        """Only rows `keep` stay, in the cache too."""
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


class _StepOutOfMemory(Exception):
    """A decode step's forward ran out of memory; the batch is as it was before the step."""


def out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's out-of-memory, or the CPU allocator's."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(exc)


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
def sample(logits: torch.Tensor, params: list[SamplingParams], draws: torch.Tensor) -> torch.Tensor:
    """The token each row samples from its filtered distribution (temperature, then top-k, then top-p, as vLLM),
    chosen by the row's uniform draw through the inverse of its cumulative distribution in vocabulary order; all
    rows of a top-k together, with no wait for the device. A row's token depends on its logits, settings and draw
    alone (never on the rest of its batch); one whose distribution is not finite gets its greedy token."""
    vocab = logits.shape[-1]
    chosen = logits.argmax(-1)
    groups: dict[int, list[int]] = {}
    for i, settings in enumerate(params):
        groups.setdefault(settings.top_k if 0 < settings.top_k < vocab else vocab, []).append(i)
    for top_k, rows in groups.items():
        index = torch.tensor(rows, device=logits.device)
        chosen[index] = _sample_group(logits[index], [params[i] for i in rows], draws[index], top_k)
    return chosen


def _sample_group(logits: torch.Tensor, params: list[SamplingParams], draws: torch.Tensor, top_k: int) -> torch.Tensor:
    """Rows of one top-k: among the top_k largest only (sorted once, not the whole vocabulary), or all."""
    device, vocab = logits.device, logits.shape[-1]
    temperatures = torch.tensor([p.temperature for p in params], device=device)
    scaled = (logits - logits.max(-1, keepdim=True).values) / temperatures[:, None]
    if top_k < vocab:
        scaled, candidates = torch.topk(scaled, top_k, dim=-1)  # largest first
    probs = torch.softmax(scaled, dim=-1)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    if bool((top_p < 1.0).any()):
        ordered, order = (probs, None) if top_k < vocab else torch.sort(probs, dim=-1, descending=True)
        ordered = ordered.masked_fill(ordered.cumsum(-1) - ordered > top_p[:, None], 0)  # the head reaching top_p
        probs = ordered if order is None else torch.zeros_like(probs).scatter_(1, order, ordered)
    if top_k < vocab:  # back to vocabulary order, so that a draw picks what it would over the whole vocabulary
        candidates, order = candidates.sort(-1)
        probs = probs.gather(1, order)
    cdf = probs.cumsum(-1)
    total = cdf[:, -1]
    picked = torch.searchsorted(cdf, (draws * total)[:, None], right=True).squeeze(1).clamp(max=cdf.shape[-1] - 1)
    if top_k < vocab:
        picked = candidates.gather(1, picked[:, None]).squeeze(1)
    usable = torch.isfinite(probs).all(-1) & (total > 0)
    return torch.where(usable, picked, logits.argmax(-1))
