"""Tokenize and mask instruction records, in the processes that build the token cache. Nothing here imports
torch or transformers, so a tokenizing process starts in a second: it gets the tokenizer's Rust backend alone
(`WorkerTokenizer`) unless a chat template needs the whole tokenizer."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import DataError
from ..fileio import atomic_write_json
from ..prompts import PromptTemplate
from ..records import Record, Segment, Source

BATCH_ROWS = 2048
SCHEMA = pa.schema([("id", pa.string()), ("lang", pa.string()), ("input_ids", pa.list_(pa.int32())),
                    ("masked", pa.int32())])
# preference rows: `input_ids` is prompt + chosen, `rejected_ids` prompt + rejected, `masked` the prompt's length
PREFERENCE_SCHEMA = SCHEMA.append(pa.field("rejected_ids", pa.list_(pa.int32())))


@dataclass(frozen=True)
class Settings:
    """What tokenization depends on, besides the data."""

    template: PromptTemplate
    cutoff_len: int
    train_on_inputs: bool
    preference: bool = False  # rows are (prompt, chosen, rejected) for --method dpo / orpo

    @property
    def schema(self) -> pa.Schema:
        return PREFERENCE_SCHEMA if self.preference else SCHEMA


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

    def merge(self, other: dict[str, Any]) -> None:
        """Add the counts of another piece (or entry), as written in its JSON."""
        self.rows += other["rows"]
        self.tokens += other["tokens"]
        self.target_tokens += other["target_tokens"]
        for lang, counts in other["per_language"].items():
            self.per_language[lang] = [a + b for a, b in zip(self.per_language.get(lang, [0, 0, 0]), counts)]
        self.left_out.update(other["left_out"])
        self.first_left_out.extend(other["first_left_out"][: max(0, 10 - len(self.first_left_out))])


@dataclass(frozen=True)
class WorkerTokenizer:
    """What tokenizing needs of a fast tokenizer when the template is plain text: cheap to send to a process."""

    backend_tokenizer: Any
    eos_token_id: int


def for_workers(tokenizer: Any, template: PromptTemplate) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if template.uses_chat_template or backend is None:
        return tokenizer
    return WorkerTokenizer(backend, tokenizer.eos_token_id)


def tokenize_batch(records: list[Record], tokenizer: Any, template: PromptTemplate, cutoff_len: int,
                   train_on_inputs: bool, preference: bool = False) -> list[tuple[list[int], int, list[int]]]:
    """(input_ids, masked, rejected_ids) of each record: prompt + output + EOS, cut to cutoff_len; the first
    `masked` tokens (the prompt's, unless train_on_inputs) are not learned, the output and its EOS always are.
    With `preference`, `output` is the chosen answer, `rejected_ids` the prompt + rejected answer + EOS, and
    `masked` always the prompt's length. The prompt and the answers are tokenized apart, so the mask boundary is
    exact."""
    prompts = encode(tokenizer, [template.render(r.instruction, r.input, tokenizer) for r in records],
                     add_special_tokens=not template.uses_chat_template)
    outputs = encode(tokenizer, [record.output for record in records], add_special_tokens=False)
    rejected = encode(tokenizer, [record.rejected for record in records], add_special_tokens=False) if preference \
        else [None] * len(records)
    rows, eos = [], [tokenizer.eos_token_id]
    for prompt_ids, output_ids, rejected_ids in zip(prompts, outputs, rejected):
        masked = 0 if train_on_inputs and not preference else min(len(prompt_ids), cutoff_len)
        rows.append(((prompt_ids + output_ids + eos)[:cutoff_len], masked,
                     (prompt_ids + rejected_ids + eos)[:cutoff_len] if preference else []))
    return rows


def encode(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """Token ids of many texts. A fast tokenizer's Rust backend is called directly (no offsets, no Python
    objects per token: about twice as fast), unless it truncates or pads by itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]


_worker: dict[str, Any] = {}


def start_worker(tokenizer: Any, settings: Settings, parallel_tokenizer: bool) -> None:
    """Set up a process that tokenizes pieces: with several such processes, each tokenizes on one core."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel_tokenizer else "false"
    _worker.update(tokenizer=tokenizer, settings=settings)


def tokenize_piece(piece: Piece) -> None:
    """Tokenize one piece into its Arrow file and the file's counts, each written whole (temporary + rename)."""
    tokenizer, settings = _worker["tokenizer"], _worker["settings"]
    stats = PieceStats()
    before = source_state(piece.source)
    temporary = piece.path.with_name(f"{piece.path.name}.{os.getpid()}.tmp")
    records = piece.source.records(piece.segment)
    with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_stream(sink, settings.schema) as writer:
        while chunk := list(islice(records, BATCH_ROWS)):
            if settings.preference:
                _check_preferences(piece, chunk)
            kept = [record for record in chunk if record.output.strip()]
            _left_out(stats, "empty output", [record for record in chunk if not record.output.strip()])
            tokens = tokenize_batch(kept, tokenizer, settings.template, settings.cutoff_len, settings.train_on_inputs,
                                    settings.preference)
            fits = [len(ids) > masked and (not settings.preference or len(rejected) > masked)
                    for ids, masked, rejected in tokens]
            usable = [(record, row) for record, row, fit in zip(kept, tokens, fits) if fit]
            _left_out(stats, f"no target token within --cutoff_len {settings.cutoff_len}",
                      [record for record, fit in zip(kept, fits) if not fit])
            _count(stats, usable)
            columns = [pa.array([record.id for record, _ in usable], pa.string()),
                       pa.array([record.lang for record, _ in usable], pa.string()),
                       pa.array([row[0] for _, row in usable], pa.list_(pa.int32())),
                       pa.array([row[1] for _, row in usable], pa.int32())]
            if settings.preference:
                columns.append(pa.array([row[2] for _, row in usable], pa.list_(pa.int32())))
            writer.write_batch(pa.record_batch(columns, schema=settings.schema))
        sink.flush()
        os.fsync(sink.fileno())
    temporary.replace(piece.path)
    read_from = before if source_state(piece.source) == before else None  # None: the file changed while read
    atomic_write_json(stats_file(piece.path), {**stats.__dict__, "read_from": read_from})


def source_state(source: Source) -> list[int] | None:
    """A data file's size and modification time (None for other sources): what a piece records of the file it
    read, so that a piece read from a file that has changed since is never served under the old content's key."""
    if source.kind != "file":
        return None
    stat = os.stat(source.location)
    return [stat.st_size, stat.st_mtime_ns]


def read_from(piece_path: Path) -> list[int] | None:
    return json.loads(stats_file(piece_path).read_text()).get("read_from")


def _check_preferences(piece: Piece, records: list[Record]) -> None:
    missing = next((record for record in records if not record.rejected), None)
    if missing is not None:
        raise DataError(f"{piece.source.location}: record {missing.id}: field 'rejected' is missing; --method dpo "
                        "and orpo train on preference records ({instruction, input, chosen, rejected, lang} or "
                        "TRL's {prompt, chosen, rejected}).")


def _left_out(stats: PieceStats, why: str, dropped: list[Record]) -> None:
    """Count rows left out under `why`, naming the first few."""
    if dropped:
        stats.left_out[why] += len(dropped)
        names = [f"{record.lang}:{record.id}" for record in dropped]
        stats.first_left_out.extend(names[: max(0, 10 - len(stats.first_left_out))])


def _count(stats: PieceStats, usable: list[tuple[Record, tuple[list[int], int, list[int]]]]) -> None:
    """Rows, tokens and target tokens (a preference row's are its two sequences')."""
    for record, (ids, masked, rejected) in usable:
        tokens = len(ids) + len(rejected)
        targets = tokens - masked * (2 if rejected else 1)
        counts = stats.per_language.setdefault(record.lang, [0, 0, 0])
        for position, amount in enumerate((1, tokens, targets)):
            counts[position] += amount
        stats.rows += 1
        stats.tokens += tokens
        stats.target_tokens += targets


def stats_file(piece_path: Path) -> Path:
    return piece_path.with_suffix(".json")
