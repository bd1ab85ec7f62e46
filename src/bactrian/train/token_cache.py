"""Tokenize once, map many times: the tokenized training rows, on disk, memory-mapped.

Each data source (a file, a `datasets` folder, a hub config) gets one cache entry, keyed by its content hash,
the tokenizer, the prompt template, --cutoff_len and --train_on_inputs: a rerun, a resumed run, every process of
a distributed run and each --per_language run map the entries that exist and tokenize only what is new. An
entry is a folder of Arrow IPC stream files (`datasets.Dataset.from_file` reads them too) with columns `id`,
`lang`, `input_ids` (int32) and `masked` (how many leading tokens are not learned), plus `meta.json` with its
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
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import languages
from ..errors import DataError
from ..fileio import atomic_write_json, file_sha256, fsync_dir
from ..manifest import fingerprint_inputs
from ..prompts import PromptTemplate
from ..records import Segment, Source
from . import dataset as ds
from .distributed import DistributedContext

log = logging.getLogger(__name__)

CACHE_VERSION = 1
META = "meta.json"
SEGMENT_BYTES = 32 << 20
BATCH_ROWS = 2048
SCHEMA = pa.schema([("id", pa.string()), ("lang", pa.string()), ("input_ids", pa.list_(pa.int32())),
                    ("masked", pa.int32())])
LANG_CODES = pa.array(languages.CODES)


@dataclass(frozen=True)
class Settings:
    """What tokenization depends on, besides the data."""

    template: PromptTemplate
    cutoff_len: int
    train_on_inputs: bool


@dataclass(frozen=True)
class Piece:
    source: Source
    segment: Segment | None
    path: Path  # the Arrow file it becomes


@dataclass
class PieceStats:
    rows: int = 0
    tokens: int = 0
    target_tokens: int = 0
    per_language: dict[str, list[int]] = field(default_factory=dict)  # lang: [rows, tokens, target tokens]
    left_out: Counter = field(default_factory=Counter)  # why: count
    first_left_out: list[str] = field(default_factory=list)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What the token ids depend on: the tokenizer's whole definition, its EOS and its chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([tokenizer.eos_token_id, getattr(tokenizer, "chat_template", None)])
    return hashlib.sha256((definition + extra).encode("utf-8")).hexdigest()


def entry_key(source: Source, tokenizer_hash: str, settings: Settings) -> str:
    if source.kind == "file":
        content: Any = file_sha256(source.location)
    elif source.kind == "saved":
        content = fingerprint_inputs([source.location])
    else:
        content = source.location  # a hub config: the id is all there is before downloading it
    key = json.dumps([CACHE_VERSION, source.kind, source.default_lang, content, tokenizer_hash,
                      settings.template.to_dict(), settings.cutoff_len, settings.train_on_inputs], sort_keys=True)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def open_rows(data_sources: list[Source], tokenizer: Any, settings: Settings, cache_dir: Path, num_proc: int,
              context: DistributedContext) -> TokenizedRows:
    """The rows of `data_sources`, tokenized: entries that exist are mapped, missing ones built first. In a
    distributed run, global rank 0 builds; then, where the cache is not on shared storage, each machine's local
    rank 0 builds its own copy; every other process waits and maps."""
    tokenizer_hash = tokenizer_fingerprint(tokenizer)
    entries = [cache_dir / entry_key(source, tokenizer_hash, settings) for source in data_sources]
    for builds in (context.is_main, context.local_rank == 0):
        missing = [(source, entry) for source, entry in zip(data_sources, entries) if not (entry / META).is_file()]
        if builds and missing:
            build(missing, tokenizer, settings, num_proc)
        context.barrier()
    return TokenizedRows(entries)


def build(missing: list[tuple[Source, Path]], tokenizer: Any, settings: Settings, num_proc: int) -> None:
    started = time.perf_counter()
    pieces = [Piece(source, segment, _staging(entry) / f"part-{number:05d}.arrow")
              for source, entry in missing for number, segment in enumerate(source.segments(SEGMENT_BYTES))]
    for piece in pieces:
        piece.path.parent.mkdir(parents=True, exist_ok=True)
    todo = [piece for piece in pieces if not _stats_file(piece.path).is_file()]
    workers = min(num_proc, len(todo))
    log.info("Tokenizing %d source(s) (%d piece(s), %d already done) with %d process(es) into %s.", len(missing),
             len(pieces), len(pieces) - len(todo), max(workers, 1), missing[0][1].parent)
    if workers > 1:
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_start_worker, initargs=(tokenizer, settings, False)) as pool:
            for _ in pool.imap_unordered(_tokenize_piece, todo):
                pass
    else:
        _start_worker(tokenizer, settings, True)
        for piece in todo:
            _tokenize_piece(piece)
    for source, entry in missing:
        _finish_entry(source, entry)
    log.info("Tokenized in %.1f s.", time.perf_counter() - started)


_worker: dict[str, Any] = {}


def _start_worker(tokenizer: Any, settings: Settings, parallel_tokenizer: bool) -> None:
    """Set up a process that tokenizes pieces: with several such processes, each tokenizes on one core."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel_tokenizer else "false"
    _worker.update(tokenizer=tokenizer, settings=settings)


def _tokenize_piece(piece: Piece) -> None:
    """Tokenize one piece into its Arrow file and the file's counts, each written whole (temporary + rename)."""
    tokenizer, settings = _worker["tokenizer"], _worker["settings"]
    stats = PieceStats()
    temporary = piece.path.with_name(f"{piece.path.name}.{os.getpid()}.tmp")
    records = piece.source.records(piece.segment)
    with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
        while chunk := list(islice(records, BATCH_ROWS)):
            kept = _keep(stats, "empty output", [(record, record.output.strip()) for record in chunk])
            tokens = ds.tokenize_batch(kept, tokenizer, settings.template, settings.cutoff_len,
                                       settings.train_on_inputs)
            usable = _keep(stats, f"no target token within --cutoff_len {settings.cutoff_len}",
                           [((record, row), len(row[0]) > row[1]) for record, row in zip(kept, tokens)])
            _count(stats, usable)
            writer.write_batch(pa.record_batch([
                pa.array([record.id for record, _ in usable], pa.string()),
                pa.array([record.lang for record, _ in usable], pa.string()),
                pa.array([ids for _, (ids, _) in usable], pa.list_(pa.int32())),
                pa.array([masked for _, (_, masked) in usable], pa.int32()),
            ], schema=SCHEMA))
        sink.flush()
        os.fsync(sink.fileno())
    temporary.replace(piece.path)
    atomic_write_json(_stats_file(piece.path), stats.__dict__)


def _keep(stats: PieceStats, why: str, judged: list[tuple[Any, Any]]) -> list:
    """The items judged worth keeping; the others are counted under `why` (the first few named)."""
    dropped = [item[0] if isinstance(item, tuple) else item for item, keep in judged if not keep]
    if dropped:
        stats.left_out[why] += len(dropped)
        names = [f"{record.lang}:{record.id}" for record in dropped]
        stats.first_left_out.extend(names[: max(0, 10 - len(stats.first_left_out))])
    return [item for item, keep in judged if keep]


def _count(stats: PieceStats, usable: list) -> None:
    for record, (ids, masked) in usable:
        counts = stats.per_language.setdefault(record.lang, [0, 0, 0])
        counts[0] += 1
        counts[1] += len(ids)
        counts[2] += len(ids) - masked
    stats.rows += len(usable)
    stats.tokens += sum(len(ids) for _, (ids, _) in usable)
    stats.target_tokens += sum(len(ids) - masked for _, (ids, masked) in usable)


def _staging(entry: Path) -> Path:
    return entry.with_name(f".{entry.name}.partial")


def _stats_file(piece_path: Path) -> Path:
    return piece_path.with_suffix(".json")


def _finish_entry(source: Source, entry: Path) -> None:
    """Sum the pieces' counts into meta.json and rename the staging folder into place. Another builder that got
    there first (a second job on shared storage) wins; its entry is the same."""
    staging = _staging(entry)
    parts = sorted(staging.glob("part-*.json"))
    totals = PieceStats()
    for part in parts:
        piece = json.loads(part.read_text())
        totals.rows += piece["rows"]
        totals.tokens += piece["tokens"]
        totals.target_tokens += piece["target_tokens"]
        for lang, counts in piece["per_language"].items():
            totals.per_language[lang] = [a + b for a, b in zip(totals.per_language.get(lang, [0, 0, 0]), counts)]
        totals.left_out.update(piece["left_out"])
        totals.first_left_out.extend(piece["first_left_out"][: max(0, 10 - len(totals.first_left_out))])
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
        lengths = [np.diff(batch.column("input_ids").offsets.to_numpy()) for batch in self._batches]
        masked = [batch.column("masked").to_numpy() for batch in self._batches]
        codes = [pc.index_in(batch.column("lang"), value_set=LANG_CODES).to_numpy() for batch in self._batches]
        self.lengths = np.concatenate(lengths or [[]]).astype(np.int32)
        self.targets = self.lengths - np.concatenate(masked or [[]]).astype(np.int32)
        self.lang_codes = np.concatenate(codes or [[]]).astype(np.uint8)

    def __len__(self) -> int:
        return len(self.lengths)

    def example(self, row: int) -> ds.Example:
        batch_number = int(np.searchsorted(self._starts, row, side="right")) - 1
        batch, position = self._batches[batch_number], row - int(self._starts[batch_number])
        ids = batch.column("input_ids")[position].values.to_numpy().tolist()
        return ds.Example.from_tokens(batch.column("id")[position].as_py(), languages.CODES[self.lang_codes[row]],
                                      ids, int(batch.column("masked")[position].as_py()))

    def take(self, rows: Any) -> list[ds.Example]:
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
        per_language: dict[str, list[int]] = {}
        left_out: Counter = Counter()
        for meta in self.metas:
            for lang, counts in meta["per_language"].items():
                per_language[lang] = [a + b for a, b in zip(per_language.get(lang, [0, 0, 0]), counts)]
            left_out.update(meta["left_out"])
        return {"rows": sum(meta["rows"] for meta in self.metas),
                "tokens": sum(meta["tokens"] for meta in self.metas),
                "target_tokens": sum(meta["target_tokens"] for meta in self.metas),
                "per_language": {lang: dict(zip(("rows", "tokens", "target_tokens"), counts))
                                 for lang, counts in sorted(per_language.items())},
                "left_out": dict(left_out),
                "first_left_out": [row for meta in self.metas for row in meta["first_left_out"]][:10]}


class ExampleSet:
    """Some rows of a TokenizedRows (the training split): what the batch schedule sees is their languages."""

    def __init__(self, rows: TokenizedRows, positions: np.ndarray):
        self.rows, self.positions = rows, positions
        self.lang_codes = rows.lang_codes[positions]

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, indices: Any) -> list[ds.Example]:
        return self.rows.take(self.positions[np.asarray(indices, dtype=np.int64)])

    def language_counts(self) -> dict[str, int]:
        codes, counts = np.unique(self.lang_codes, return_counts=True)
        return {languages.CODES[code]: int(count) for code, count in zip(codes, counts)}

    def target_tokens(self) -> int:
        """Tokens an epoch learns (what a full run costs is this times --num_epochs)."""
        return int(self.rows.targets[self.positions].sum())
