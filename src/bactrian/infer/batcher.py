"""The server's scheduler: one worker thread runs a continuous batch on the engine. A request joins the batch at
the next step, whatever is running, and leaves it when done; each caller gets its own stream of deltas.

Bounds: at most `max_batch` rows decode together and at most `max_queue` requests wait behind them; beyond
that `submit` refuses with `QueueFull` (the server's 429). A caller that goes away cancels its own request,
which leaves the batch at the next step. The worker never dies silently: an unexpected error fails the
requests it holds, is counted, and the worker starts again; `health()` says so."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..errors import QueueFull
from .protocols import DecodingModel
from .requests import Delta, Request
from .scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclass
class _Job:
    request: Request
    loop: asyncio.AbstractEventLoop
    deltas: asyncio.Queue

    def send(self, item: Delta) -> None:
        try:
            self.loop.call_soon_threadsafe(self.deltas.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed: nobody is listening any more
            self.request.cancelled.set()


class Batcher:
    """The local `protocols.Backend`: requests decoded by one worker on `model` (an engine)."""

    def __init__(self, model: DecodingModel, max_batch: int = 64, wait_ms: float = 5.0, max_queue: int = 256,
                 prefill_tokens: int = 512):
        self.model, self.max_batch, self.wait = model, max_batch, wait_ms / 1000
        self.prefill_tokens = prefill_tokens
        self.pending: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self.restarts = 0
        self.last_error: str | None = None
        self.finished: Counter[str] = Counter()  # requests ended, by finish reason (stop, length, cancelled, error)
        self.most_rows = 0  # the largest batch decoded so far
        self._start_worker()

    # -- callers ------------------------------------------------------------------------------------------
    def submit(self, request: Request) -> AsyncIterator[Delta]:
        """Queue a request (QueueFull when the queue is full) and return the stream of its deltas; leaving that
        stream early (a disconnect) cancels the request."""
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue())
        try:
            self.pending.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.pending.maxsize} requests are already waiting; try again shortly.") from None
        return self._deltas(job)

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        async for delta in self.submit(request):
            yield delta

    @staticmethod
    async def _deltas(job: _Job) -> AsyncIterator[Delta]:
        try:
            while True:
                delta = await job.deltas.get()
                yield delta
                if delta.finish_reason:
                    return
        finally:
            job.request.cancelled.set()

    def health(self) -> dict[str, object]:
        return {"status": "ok" if self.worker.is_alive() else "error", "worker_alive": self.worker.is_alive(),
                "worker_restarts": self.restarts, "last_error": self.last_error, "queued": self.pending.qsize(),
                "decoding": self.model.mode}

    # -- the worker ---------------------------------------------------------------------------------------
    def _start_worker(self) -> None:
        self.worker = threading.Thread(target=self._supervise, name="bactrian-batcher", daemon=True)
        self.worker.start()

    def _supervise(self) -> None:
        while True:
            jobs: dict[int, _Job] = {}
            try:
                self._work(jobs)
            except Exception as exc:  # noqa: BLE001 - anything at all: fail what it held, then start again
                self.restarts += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("The decoding worker failed (%s); failing its %d request(s) and restarting.",
                          self.last_error, len(jobs))
                for index, job in jobs.items():
                    job.send(Delta(index, "", "error", error="the decoding worker failed; please retry"))
                self.finished["error"] += len(jobs)

    def _work(self, jobs: dict[int, _Job]) -> None:
        scheduler = Scheduler(self.model, self.max_batch, self.prefill_tokens)
        serial = 0
        while True:
            for job in self._take(idle=not len(scheduler), room=scheduler.room):
                serial += 1
                jobs[serial] = job
                scheduler.admit(serial, job.request)
            if not len(scheduler):
                continue
            deltas = scheduler.step()
            self.most_rows = max(self.most_rows, scheduler.decoding)
            for delta in deltas:
                job = jobs.get(delta.index)
                if job is not None:
                    job.send(delta)
                    if delta.finish_reason:
                        self.finished[delta.finish_reason] += 1
                        del jobs[delta.index]

    def _take(self, idle: bool, room: int) -> list[_Job]:
        """Waiting requests that are still wanted: when idle, block for the first and wait `wait` for company."""
        taken: list[_Job] = []
        deadline = None
        while len(taken) < room:
            try:
                if idle and not taken:
                    job = self.pending.get()
                    deadline = time.monotonic() + self.wait
                elif deadline is not None and deadline > time.monotonic():
                    job = self.pending.get(timeout=deadline - time.monotonic())
                else:
                    job = self.pending.get_nowait()
            except queue.Empty:
                break
            if not job.request.cancelled.is_set():
                taken.append(job)
        return taken
