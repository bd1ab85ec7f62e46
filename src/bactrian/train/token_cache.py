"""Tokenize once, map many times: the tokenized training rows, on disk, memory-mapped.

Each data source (a file, a `datasets` folder, a hub config) gets one cache entry, keyed by its content hash,
the tokenizer, the prompt template, --cutoff_len and --train_on_inputs: a rerun, a resumed run, every process of
a distributed run and each --per_language run map the entries that exist and tokenize only what is new. An
entry is a folder of Arrow IPC stream files (`datasets.Dataset.from_file` reads them too) with columns `id`,
`lang`, `input_ids` (int32) and `masked` (how many leading tokens are not learned; preference rows also have
`rejected_ids`, and `input_ids` is then the chosen answer's sequence), plus `meta.json` with its
row and token counts. Pieces (a source, or ~32 MiB of a JSONL file) are tokenized in parallel over --num_proc
processes and each is written atomically, so an interrupted build resumes with the pieces it has; the entry
becomes visible by one rename once complete.

In memory a run holds an index only: each row's length, target count and language (9 bytes a row)."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import languages
from ..errors import DataError
from ..fileio import atomic_write_json, file_sha256, fsync_dir
from ..manifest import fingerprint_inputs
from ..models import bactrian_home
from ..prompts import PromptTemplate
from ..records import Source, hub_split, sources
from . import dataset as ds
from . import tokenize
from .config import FinetuneConfig
from .distributed import DistributedContext

log = logging.getLogger(__name__)

CACHE_VERSION = 1
META = "meta.json"
SEGMENT_BYTES = 32 << 20
LANG_CODES = pa.array(languages.CODES)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What the token ids depend on: the tokenizer's whole definition, its EOS and its chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([tokenizer.eos_token_id, getattr(tokenizer, "chat_template", None)])
    return hashlib.sha256((definition + extra).encode("utf-8")).hexdigest()


def content_of(source: Source) -> Any:
    """What identifies a source's content: a file's sha256, a folder's files' hashes, a hub split's fingerprint
    (datasets' hash of the downloaded revision), so that changed data is never served from the cache."""
    if source.kind == "file":
        return file_sha256(source.location)
    if source.kind == "saved":
        return fingerprint_inputs([source.location])
    split = hub_split(source.location, str(source.default_lang))
    return [source.location, getattr(split, "_fingerprint", None) or len(split)]


def entry_key(source: Source, tokenizer_hash: str, settings: tokenize.Settings) -> str:
    content = content_of(source)
    key = json.dumps([CACHE_VERSION, source.kind, source.default_lang, content, tokenizer_hash,
                      settings.template.to_dict(), settings.cutoff_len, settings.train_on_inputs,
                      settings.preference], sort_keys=True)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def open_rows(data_sources: list[Source], tokenizer: Any, settings: tokenize.Settings, cache_dir: Path, num_proc: int,
              context: DistributedContext) -> TokenizedRows:
    """The rows of `data_sources`, tokenized: entries that exist are mapped, missing ones built first. In a
    distributed run, global rank 0 builds; then, where the cache is not on shared storage, each machine's local
    rank 0 builds its own copy; every other process waits and maps."""
    tokenizer_hash = tokenizer_fingerprint(tokenizer)
    entries = [cache_dir / entry_key(source, tokenizer_hash, settings) for source in data_sources]
    checked = False  # a builder checks that each entry is whole once (a single process is both builders)
    for builds in (context.is_main, context.local_rank == 0):
        missing = [(source, entry) for source, entry in zip(data_sources, entries)
                   if not (entry / META).is_file() or (builds and not checked and not _is_whole(entry))]
        checked = checked or builds
        if builds and missing:
            for _, entry in missing:
                shutil.rmtree(entry, ignore_errors=True)  # a damaged entry is rebuilt, never half-read
            build(missing, tokenizer, settings, num_proc, tokenizer_hash)
        context.barrier()
    return TokenizedRows(entries)


def tokenized_rows(config: FinetuneConfig, tokenizer: Any, template: PromptTemplate,
                   context: DistributedContext) -> TokenizedRows:
    """A finetune run's data sources, tokenized (from the cache when there), with what was left out said."""
    settings = tokenize.Settings(template, config.cutoff_len, config.train_on_inputs, config.method != "sft")
    cache_dir = Path(config.cache_dir) if config.cache_dir else bactrian_home() / "tokenized"
    num_proc = config.num_proc if config.num_proc > 0 else len(os.sched_getaffinity(0))
    data = sources(config.data_path, languages.parse_langs(config.lang) or None)
    rows = open_rows(data, tokenizer, settings, cache_dir, num_proc, context)
    summary = rows.summary()
    if summary["left_out"] and context.is_main:
        log.warning("Left out %s (first: %s). Raise --cutoff_len to keep rows whose prompt fills it.",
                    ", ".join(f"{count} row(s) with {why}" for why, count in summary["left_out"].items()),
                    ", ".join(summary["first_left_out"]))
    return rows


def _is_whole(entry: Path) -> bool:
    """Whether an entry holds what its meta.json says: that many pieces, each readable, with that many rows. A
    piece cut short or a meta.json undercounting its pieces would otherwise drop rows (a language) silently."""
    try:
        meta = json.loads((entry / META).read_text())
        pieces = sorted(entry.glob("part-*.arrow"))
        if [path.name for path in pieces] != [f"part-{number:05d}.arrow" for number in range(meta["pieces"])]:
            raise ValueError(f"{len(pieces)} piece(s) on disk, {meta['pieces']} in {META}")
        rows = sum(batch.num_rows for path in pieces for batch in pa.ipc.open_stream(pa.memory_map(str(path))))
        if rows != meta["rows"]:
            raise ValueError(f"{rows} rows in its pieces, {meta['rows']} in {META}")
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        log.warning("The token cache entry %s is damaged (%s): rebuilding it.", entry, exc)
        return False
    return True


def build(missing: list[tuple[Source, Path]], tokenizer: Any, settings: tokenize.Settings, num_proc: int,
          tokenizer_hash: str) -> None:
    started = time.perf_counter()
    pieces = [tokenize.Piece(source, segment, _staging(entry) / f"part-{number:05d}.arrow")
              for source, entry in missing for number, segment in enumerate(source.segments(SEGMENT_BYTES))]
    for piece in pieces:
        piece.path.parent.mkdir(parents=True, exist_ok=True)
    todo = [piece for piece in pieces if not _is_current(piece)]
    workers = min(num_proc, len(todo))
    log.info("Tokenizing %d source(s) (%d piece(s), %d already done) with %d process(es) into %s.", len(missing),
             len(pieces), len(pieces) - len(todo), max(workers, 1), missing[0][1].parent)
    if workers > 1:  # a worker that dies (killed, out of memory) fails the build instead of hanging it
        spawn = multiprocessing.get_context("spawn")
        worker_tokenizer = tokenize.for_workers(tokenizer, settings.template)
        with ProcessPoolExecutor(workers, mp_context=spawn, initializer=tokenize.start_worker,
                                 initargs=(worker_tokenizer, settings, False)) as pool:
            list(pool.map(tokenize.tokenize_piece, todo))
    else:
        tokenize.start_worker(tokenizer, settings, True)
        for piece in todo:
            tokenize.tokenize_piece(piece)
    for source, entry in missing:
        _check_read_what_the_key_says(source, entry, tokenizer_hash, settings)
        _finish_entry(source, entry)
    log.info("Tokenized in %.1f s.", time.perf_counter() - started)


def _is_current(piece: tokenize.Piece) -> bool:
    """A piece left by an interrupted build is kept only if it read the file as the file is now."""
    if not tokenize.stats_file(piece.path).is_file():
        return False
    state = tokenize.source_state(piece.source)
    return state is None or tokenize.read_from(piece.path) == state


def _check_read_what_the_key_says(source: Source, entry: Path, tokenizer_hash: str,
                                  settings: tokenize.Settings) -> None:
    """Every piece read the file in the state it is in now, and that state's content is the entry's key: a file
    truncated while it was tokenized, then put back (same sha256), must not leave a short entry under the full
    file's key for good."""
    state = tokenize.source_state(source)
    if state is None:
        return
    staging = _staging(entry)
    stale = [path.name for path in sorted(staging.glob("part-*.arrow")) if tokenize.read_from(path) != state]
    if stale or entry_key(source, tokenizer_hash, settings) != entry.name:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"{source.location} changed while it was being tokenized ({len(stale)} piece(s) read another "
                        "version of it); nothing of it was cached. Rerun once the file no longer changes.")


def _staging(entry: Path) -> Path:
    return entry.with_name(f".{entry.name}.partial")


def _finish_entry(source: Source, entry: Path) -> None:
    """Sum the pieces' counts into meta.json and rename the staging folder into place. Another builder that got
    there first (a second job on shared storage) wins; its entry is the same."""
    staging = _staging(entry)
    parts = sorted(staging.glob("part-*.json"))
    totals = tokenize.PieceStats()
    for part in parts:
        totals.merge(json.loads(part.read_text()))
    for leftover in staging.glob("*.tmp"):
        leftover.unlink(missing_ok=True)
    atomic_write_json(staging / META, {"version": CACHE_VERSION, "source": source.__dict__, "pieces": len(parts),
                                       **totals.__dict__})
    try:
        staging.rename(entry)
    except OSError:
        if not (entry / META).is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(entry.parent)


class TokenizedRows:
    """The rows of some cache entries, in order, memory-mapped; in memory only each row's length, number of
    target tokens and language code (an index into languages.CODES)."""

    def __init__(self, entries: list[Path]):
        self.metas = [json.loads((entry / META).read_text()) for entry in entries]
        self._batches: list[pa.RecordBatch] = []
        for entry, meta in zip(entries, self.metas):
            for number in range(meta["pieces"]):
                reader = pa.ipc.open_stream(pa.memory_map(str(entry / f"part-{number:05d}.arrow")))
                self._batches.extend(batch for batch in reader if batch.num_rows)
        self._starts = np.cumsum([0] + [batch.num_rows for batch in self._batches])
        self.preference = bool(self._batches) and "rejected_ids" in self._batches[0].schema.names
        columns = ("input_ids", "rejected_ids") if self.preference else ("input_ids",)
        lengths = [sum(np.diff(batch.column(name).offsets.to_numpy()) for name in columns) for batch in self._batches]
        masked = [len(columns) * batch.column("masked").to_numpy() for batch in self._batches]
        codes = [pc.index_in(batch.column("lang"), value_set=LANG_CODES).to_numpy() for batch in self._batches]
        self.lengths = np.concatenate(lengths or [[]]).astype(np.int32)  # a pair's: both sequences'
        self.targets = self.lengths - np.concatenate(masked or [[]]).astype(np.int32)
        self.lang_codes = np.concatenate(codes or [[]]).astype(np.uint8)

    def __len__(self) -> int:
        return len(self.lengths)

    def example(self, row: int) -> ds.Example | ds.Pair:
        batch_number = int(np.searchsorted(self._starts, row, side="right")) - 1
        batch, position = self._batches[batch_number], row - int(self._starts[batch_number])
        row_id, lang = batch.column("id")[position].as_py(), languages.CODES[self.lang_codes[row]]
        ids = batch.column("input_ids")[position].values.to_numpy().tolist()
        masked = int(batch.column("masked")[position].as_py())
        if self.preference:
            rejected = batch.column("rejected_ids")[position].values.to_numpy().tolist()
            return ds.Pair(row_id, lang, tuple(ids), tuple(rejected), masked)
        return ds.Example.from_tokens(row_id, lang, ids, masked)

    def take(self, rows: Any) -> list[ds.Example] | list[ds.Pair]:
        return [self.example(int(row)) for row in rows]

    def rows_in(self, langs: list[str]) -> np.ndarray:
        """Positions of the rows in `langs` (every row when empty); a language asked for but absent is an error."""
        if not langs:
            return np.arange(len(self))
        wanted = np.asarray([languages.CODES.index(lang) for lang in langs], dtype=np.uint8)
        missing = sorted(set(langs) - set(self.languages()))
        if missing:
            raise DataError(f"Language(s) {', '.join(missing)} asked for with --lang but not found in the data.")
        return np.flatnonzero(np.isin(self.lang_codes, wanted))

    def languages(self) -> list[str]:
        return [languages.CODES[code] for code in np.unique(self.lang_codes)]

    def summary(self) -> dict[str, Any]:
        """Rows, tokens and target tokens (per language too), and what was left out, over all entries."""
        totals = tokenize.PieceStats()
        for meta in self.metas:
            totals.merge(meta)
        per_language = {lang: dict(zip(("rows", "tokens", "target_tokens"), counts))
                        for lang, counts in sorted(totals.per_language.items())}
        return {**totals.__dict__, "per_language": per_language, "left_out": dict(totals.left_out)}


class ExampleSet:
    """Some rows of a TokenizedRows (the training split): what the batch schedule sees is their languages."""

    def __init__(self, rows: TokenizedRows, positions: np.ndarray):
        self.rows, self.positions = rows, positions
        self.lang_codes = rows.lang_codes[positions]

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, indices: Any) -> list[ds.Example] | list[ds.Pair]:
        return self.rows.take(self.positions[np.asarray(indices, dtype=np.int64)])

    def language_counts(self) -> dict[str, int]:
        codes, counts = np.unique(self.lang_codes, return_counts=True)
        return {languages.CODES[code]: int(count) for code, count in zip(codes, counts)}

    def target_tokens(self) -> int:
        """Tokens an epoch learns (what a full run costs is this times --num_epochs)."""
        return int(self.rows.targets[self.positions].sum())
