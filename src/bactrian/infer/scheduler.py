"""The one driver of a decoding batch, for the engine's own streams (generate, eval, chat) and for the server's
worker alike: it admits requests while there is room, keeps beam-search requests apart (they decode alone, whole,
between steps) and steps the batch under the model's lock, so other work on the model (eval's scoring) waits
for a step, never for a whole batch."""

from __future__ import annotations

from collections import deque

from .decoding import DecodeBatch, Row
from .protocols import DecodingModel
from .requests import Delta, Request

MB = 1 << 20


class Scheduler:
    def __init__(self, model: DecodingModel, max_rows: int = 0, prefill_tokens: int = 512):
        """`max_rows`: most requests held at once (0: no bound). The model's `kv_budget_bytes` bounds the KV cache:
        a request joins the batch only when the batch's cache can still grow to every row's last token within it
        (the cache is one tensor as wide as its longest row), else it waits for rows to finish."""
        self.model, self.max_rows = model, max_rows
        self.batch = DecodeBatch(model, prefill_tokens)
        self.beams: list[tuple[int, Request]] = []
        self.held: deque[Row] = deque()  # admitted, waiting for room in the KV cache

    def __len__(self) -> int:
        return len(self.batch) + len(self.beams) + len(self.held)

    @property
    def room(self) -> int:
        """How many more requests can be admitted now (a large number when unbounded)."""
        return self.max_rows - len(self) if self.max_rows else 1 << 30

    @property
    def decoding(self) -> int:
        """Rows in the running batch (not counting those waiting for their prefill)."""
        return len(self.batch.rows)

    def admit(self, index: int, request: Request) -> None:
        """Take a request; its deltas come out of `step` under `index`."""
        if request.params.num_beams > 1:
            self.beams.append((index, request))
        else:
            self.held.append(Row(request, index, self.model.device))

    def step(self) -> list[Delta]:
        """The waiting beam searches' answers, then one step of the batch: every row one token further, the
        prefill one chunk further."""
        with self.model.lock:
            beams, self.beams = self.beams, []
            deltas = [self.model.beam_search(index, request) for index, request in beams]
            return deltas + self._release() + list(self.batch.step())

    def _release(self) -> list[Delta]:
        """Held rows join the batch, first come first, while its cache's worst case fits the budget; one that
        cannot fit even alone is refused."""
        refused = []
        while self.held:
            row, rows = self.held[0], self.batch.all_rows()
            if row.request.cancelled.is_set():
                self.held.popleft()
                refused.append(Delta(row.index, "", "cancelled"))
            elif self._fits([*rows, row]):
                self.batch.admit([self.held.popleft()])
            elif not rows:
                self.held.popleft()
                refused.append(row.fail(f"this request may need {self._worst_bytes([row]) // MB} MB of KV cache (its "
                                        f"prompt and max_tokens), more than the {self.model.kv_budget_bytes // MB} "
                                        "MB the server has for it (--kv_cache_gb): ask for fewer tokens.",
                                        status=400))
            else:
                break
        return refused

    def _fits(self, rows: list[Row]) -> bool:
        return not self.model.kv_budget_bytes or self._worst_bytes(rows) <= self.model.kv_budget_bytes

    def _worst_bytes(self, rows: list[Row]) -> int:
        widest = max(len(row.request.prompt_ids) + row.request.params.max_new_tokens for row in rows)
        return len(rows) * widest * self.model.kv_bytes_per_token
