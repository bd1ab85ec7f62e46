"""Small file helpers: atomic writes and content hashes."""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import BactrianError, ConfigError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Let `write` fill a temporary file beside `path`, flush it to disk, then rename it into place: readers see
    the old file or the whole new one, even after a crash. Used for every file the tool writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; a file others must read gets what open() gives
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if out_of_space(exc):
            raise DiskFull(path) from None
        raise


def out_of_space(exc: BaseException) -> bool:
    """Whether an error says the disk (or quota) is full: ENOSPC / EDQUOT, or SQLite's "database or disk is full"."""
    if isinstance(exc, sqlite3.OperationalError):
        return "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskFull(BactrianError):
    """A write failed for want of space: the file named is as it was before (or absent); nothing is half-written."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(f"{path}: no space left on the device (or quota) while writing it; it is kept as it was. "
                         "Free some space, then rerun the same command: finished work is kept.")


@contextmanager
def disk_full_named(path: str | os.PathLike, spare_bytes: int = 16 << 20) -> Iterator[None]:
    """Around a library's write (save_pretrained, torch): a failure with less than `spare_bytes` left on the
    device is a DiskFull naming `path`, whatever error the library raised for it."""
    try:
        yield
    except Exception as exc:
        if out_of_space(exc) or shutil.disk_usage(Path(path).parent).free < spare_bytes:
            raise DiskFull(path) from exc
        raise


def staging_folder(target: Path) -> Path:
    """A new private staging folder beside `target` (for a folder renamed into place when complete), with the
    permissions the umask gives, as `mkdir` would (mkdtemp makes 0700)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    staging.chmod(0o777 & ~UMASK)
    return staging


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: done once, at import, and put back at once
    os.umask(mask)
    return mask


UMASK = _read_umask()


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file below `folder` and the folders themselves to disk (before renaming it into place)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new entry in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(staging: Path, target: Path) -> None:
    """Put the finished folder `staging` at `target`. An existing target stays complete until the new one is in
    place: it is moved aside first, then removed. Both must share a parent folder."""
    fsync_tree(staging)
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, aside)
    os.replace(staging, target)
    fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


def remove_leftovers(target: Path) -> None:
    """Staging and moved-aside folders of `target` that a killed run left behind."""
    for leftover in target.parent.glob(f".{target.name}.*"):
        if leftover.name.startswith((f".{target.name}.partial-", f".{target.name}.old-")):
            shutil.rmtree(leftover, ignore_errors=True)


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | os.PathLike) -> str:
    """The file's sha256, computed once per process for each (file, size, modification time)."""
    stat = os.stat(path)
    return _sha256_of(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sha256_of(path: str, size: int, mtime_ns: int, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def output_lock(path: str | os.PathLike, job: str) -> Iterator[None]:
    """Hold the output `path` (a folder or a file) for a whole run: a second job on it is refused, naming the
    first. The lock is an flock on a file beside `path`, removed when the run ends; it dies with its process, so
    a killed run's lock is taken over."""
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = _locked(lock, path)
    try:
        handle.truncate(0)
        handle.write(f"bactrian {job} (pid {os.getpid()} on {socket.gethostname()})\n")
        handle.flush()
        yield
    finally:
        lock.unlink(missing_ok=True)  # before unlocking: whoever opens the path next gets a new file
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _locked(lock: Path, path: Path) -> Any:
    while True:
        handle = open(lock, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(f"{path} is in use by {holder}: two jobs would overwrite each other's work there. "
                              "Wait for it to finish, or write elsewhere.") from None
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # its holder removed it between our open and our lock: try the new file


def holds_output(field: str, job: str) -> Callable:
    """Decorate a job `f(config, ...)` to hold `config.<field>` (when set) for its whole run; under torchrun only
    rank 0 holds it (every rank writes to the same folder, as one job)."""
    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def run(config: Any, *args: Any, **kwargs: Any) -> Any:
            target = getattr(config, field)
            if not target or os.environ.get("RANK", "0") != "0":
                return function(config, *args, **kwargs)
            with output_lock(target, job):
                return function(config, *args, **kwargs)
        return run
    return decorate
