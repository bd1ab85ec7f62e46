"""The one driver of a decoding batch, for the engine's own streams (generate, eval, chat) and for the server's
worker alike: it admits requests while there is room, keeps beam-search requests apart (they decode alone, whole,
between steps) and steps the batch under the model's lock, so other work on the model (eval's scoring) waits
for a step, never for a whole batch."""

from __future__ import annotations

from .decoding import DecodeBatch, Row
from .protocols import DecodingModel
from .requests import Delta, Request


class Scheduler:
    def __init__(self, model: DecodingModel, max_rows: int = 0, prefill_tokens: int = 512):
        """`max_rows`: most requests held at once (0: no bound)."""
        self.model, self.max_rows = model, max_rows
        self.batch = DecodeBatch(model, prefill_tokens)
        self.beams: list[tuple[int, Request]] = []

    def __len__(self) -> int:
        return len(self.batch) + len(self.beams)

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
            self.batch.admit([Row(request, index, self.model.device)])

    def step(self) -> list[Delta]:
        """The waiting beam searches' answers, then one step of the batch: every row one token further, the
        prefill one chunk further."""
        with self.model.lock:
            beams, self.beams = self.beams, []
            deltas = [self.model.beam_search(index, request) for index, request in beams]
            return deltas + list(self.batch.step())
