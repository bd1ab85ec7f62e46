"""`serve --guard_pairs_file`: every answer the language guard corrected, kept as a preference pair.

The corrected answer is `chosen`; the answer as it would have read without the guard's fixes (each fixed piece
replaced by its first drifting attempt, `rejected_answer`) is `rejected`. One JSON line per answer, in the
records `finetune --method dpo|orpo` reads (`bactrian.records`): `id`, `lang`, `instruction`, `input` (""),
`chosen`, `rejected`, and for whoever reads the file, `kind` ("language_guard"), `adapter` and `created`.

The instruction is the prompt of a completion, or the last user message of a chat: earlier turns (and the system
message) are not kept, so a pair from a long conversation stands as a one-turn exchange.

Several requests, and several server processes, may append to one file: each line goes in one `write` on a file
opened with O_APPEND, under a thread lock and an flock, so no two lines interleave and none is cut. The pairs are
a by-product: a line that cannot be written is logged, never the request's failure."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

KIND = "language_guard"


def pair_record(instruction: str, answer: str, report: dict[str, Any], adapter: str) -> dict[str, Any] | None:
    """The preference row of a guarded answer, or None when the guard fixed none of its pieces (or there is no
    instruction: a chat of system messages alone, a row finetune would refuse)."""
    rejected = rejected_answer(answer, report)
    if rejected is None or not instruction.strip():
        return None
    return {"id": str(uuid.uuid4()), "lang": report["lang"], "instruction": instruction, "input": "",
            "chosen": answer, "rejected": rejected, "kind": KIND, "adapter": adapter,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def rejected_answer(answer: str, report: dict[str, Any]) -> str | None:
    """The answer as it would have read without the guard's fixes: each fixed piece replaced by its first drifting
    attempt (None when the guard fixed nothing). With the answer as chosen, a preference pair."""
    fixed = [c for c in report.get("corrections", []) if c["fixed"] and c["drifted"] is not None]
    if not fixed:
        return None
    for correction in sorted(fixed, key=lambda c: c["start"], reverse=True):
        start = correction["start"]
        answer = answer[:start] + correction["drifted"] + answer[start + len(correction["text"]):]
    return answer


class PairLog:
    """Appends preference rows to one JSONL file, safely from many threads and processes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock = threading.Lock()
        try:  # refused at start, not at the first corrected answer
            os.close(self._open())
        except OSError as exc:
            raise ConfigError(f"--guard_pairs_file {self.path}: cannot append to it ({exc}).") from None

    def append(self, row: dict[str, Any]) -> bool:
        """Write `row` as one line; False (and a log line) when it could not be written."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            with self.lock:
                descriptor = self._open()
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX)
                    written = os.write(descriptor, line)
                finally:
                    os.close(descriptor)  # also releases the flock
        except OSError as exc:
            log.warning("Could not append a language-guard pair to %s: %s", self.path, exc)
            return False
        if written != len(line):
            log.warning("Only %d of %d bytes of a language-guard pair reached %s.", written, len(line), self.path)
            return False
        return True

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
