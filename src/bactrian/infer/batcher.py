"""Groups concurrent requests into batches for the engine: a request waits at most `wait_ms` for company,
then its batch is decoded together while the next requests queue up. Each caller gets its own stream of
deltas; a caller that goes away cancels its request without disturbing the others."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .engine import Delta, Engine, Request

log = logging.getLogger(__name__)


@dataclass
class _Job:
    request: Request
    loop: asyncio.AbstractEventLoop
    deltas: asyncio.Queue


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 64, wait_ms: float = 5.0):
        self.engine, self.max_batch, self.wait = engine, max_batch, wait_ms / 1000
        self.pending: queue.Queue[_Job] = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="bactrian-batcher", daemon=True)
        self.worker.start()

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        """The deltas of one request; leaving the loop early (a disconnect) cancels it."""
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue())
        self.pending.put(job)
        try:
            while True:
                item = await job.deltas.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason:
                    return
        finally:
            request.cancelled.set()

    def _work(self) -> None:
        while True:
            batch = self._collect()
            try:
                for delta in self.engine.stream([job.request for job in batch]):
                    job = batch[delta.index]
                    job.loop.call_soon_threadsafe(job.deltas.put_nowait, delta)
            except Exception as exc:  # a failing batch fails its requests, never the server
                log.exception("generation failed")
                for job in batch:
                    job.loop.call_soon_threadsafe(job.deltas.put_nowait, exc)

    def _collect(self) -> list[_Job]:
        batch = [self.pending.get()]
        deadline = time.monotonic() + self.wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.pending.get(timeout=remaining) if remaining > 0 else self.pending.get_nowait())
            except queue.Empty:
                break
        return [job for job in batch if not job.request.cancelled.is_set()] or self._collect()
