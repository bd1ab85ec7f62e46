"""A SQLite cache of request results keyed by a hash of (engine, model, parameters, messages). Each result is
committed as it arrives, so a rerun or a resumed run never sends a request whose answer is stored."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..fileio import DiskFull, out_of_space


def request_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class RequestCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        # each result is its own transaction; NORMAL skips the fsync per commit and still survives a killed
        # process (only an OS crash or power loss can drop the last commits)
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.connection.execute("CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, error TEXT NOT NULL)")
        self.lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.connection.execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._writing():
            self.connection.execute("INSERT OR REPLACE INTO results VALUES (?, ?)", (key, json.dumps(value)))
            self.connection.execute("DELETE FROM failures WHERE key = ?", (key,))

    def fail(self, key: str, error: str) -> None:
        """A request that still failed after its retries: recorded, and tried again on the next run."""
        with self._writing():
            self.connection.execute("INSERT OR REPLACE INTO failures VALUES (?, ?)", (key, error))

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A full disk stops the job naming the cache; every result committed before stays."""
        with self.lock:
            try:
                yield
            except sqlite3.OperationalError as exc:
                if out_of_space(exc):
                    raise DiskFull(self.path) from None
                raise

    def failures(self) -> dict[str, str]:
        with self.lock:
            return dict(self.connection.execute("SELECT key, error FROM failures").fetchall())

    def close(self) -> None:
        self.connection.close()
