"""The token cache: built once (in parallel, resumably), mapped afterwards, keyed by everything tokens depend on."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from bactrian.errors import DataError
from bactrian.models import load_tokenizer
from bactrian.prompts import load_template
from bactrian.records import jsonl_segments, load_records, sources
from bactrian.train import token_cache, tokenize
from bactrian.train.distributed import DistributedContext

from support import adapter_weights, flags, make_config, max_difference, sample_rows, write_jsonl


@pytest.fixture()
def tokenizer(tiny_llama):
    return load_tokenizer(str(tiny_llama))


def settings(cutoff_len=256, train_on_inputs=False, template="bactrian"):
    return tokenize.Settings(load_template(template), cutoff_len, train_on_inputs)


def open_rows(data, tokenizer, cache, num_proc=1, **kwargs):
    return token_cache.open_rows(sources([str(data)]), tokenizer, settings(**kwargs), cache, num_proc,
                                 DistributedContext())


def big_file(path, copies=60):
    rows = [row | {"id": f"{row['id']}-{n}"} for n in range(copies) for row in sample_rows("fr")]
    return write_jsonl(path, rows)


def as_lists(rows):
    return [(e.id, e.lang, e.input_ids, e.labels) for e in rows.take(range(len(rows)))]


def test_segments_cut_at_line_ends_and_number_lines(tmp_path):
    path = big_file(tmp_path / "fr.jsonl")
    segments = jsonl_segments(path, 500)
    assert len(segments) > 5 and segments[0].start == 0 and segments[-1].end == path.stat().st_size
    source = sources([str(path)])[0]
    pieces = [record for segment in segments for record in source.records(segment)]
    assert pieces == list(source.records())
    lines = path.read_bytes().split(b"\n")
    for segment in segments:
        assert sum(len(line) + 1 for line in lines[:segment.first_line - 1]) == segment.start


def test_parallel_build_equals_serial_and_a_rerun_maps_without_tokenizing(tokenizer, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(token_cache, "SEGMENT_BYTES", 2000)
    data = tmp_path / "data"
    data.mkdir()
    big_file(data / "fr.jsonl")
    write_jsonl(data / "de.jsonl", sample_rows("de", copies=3))
    serial = open_rows(data, tokenizer, tmp_path / "serial")
    parallel = open_rows(data, tokenizer, tmp_path / "parallel", num_proc=2)
    assert as_lists(serial) == as_lists(parallel) and len(serial) == 240 + 12
    assert len(list((tmp_path / "parallel").glob("*/part-*.arrow"))) > 3  # fr.jsonl was cut into pieces
    caplog.clear()
    monkeypatch.setattr(tokenize, "tokenize_batch", lambda *a: pytest.fail("tokenized again"))
    again = open_rows(data, tokenizer, tmp_path / "parallel", num_proc=2)
    assert as_lists(again) == as_lists(parallel) and "Tokenizing" not in caplog.text
    assert again.summary()["per_language"]["de"]["rows"] == 12


def test_rows_match_the_records_in_order_with_masks(tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "fr.jsonl", sample_rows("fr"))
    rows = open_rows(data, tokenizer, tmp_path / "cache")
    records = load_records(str(data))
    assert [e.id for e in rows.take(range(len(rows)))] == [r.id for r in records]
    example = rows.example(1)
    assert example.labels[0] == -100 and example.labels[-1] == tokenizer.eos_token_id
    assert rows.targets[1] == example.num_targets and rows.lengths[1] == len(example.input_ids)


def test_key_covers_data_tokenizer_template_cutoff_and_masking(tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "fr.jsonl", sample_rows("fr"))
    cache = tmp_path / "cache"
    open_rows(data, tokenizer, cache)
    for variant in (dict(cutoff_len=64), dict(train_on_inputs=True), dict(template="alpaca")):
        open_rows(data, tokenizer, cache, **variant)
    assert len(list(cache.iterdir())) == 4
    write_jsonl(data, sample_rows("fr", copies=2))
    assert len(open_rows(data, tokenizer, cache)) == 8 and len(list(cache.iterdir())) == 5
    tokenizer.add_tokens(["<extra>"])
    open_rows(data, tokenizer, cache)
    assert len(list(cache.iterdir())) == 6


def test_an_interrupted_build_keeps_its_finished_pieces(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(token_cache, "SEGMENT_BYTES", 2000)
    data = big_file(tmp_path / "fr.jsonl")
    real, calls, interrupted = tokenize.tokenize_piece, [], []

    def stop_at_the_third(piece):
        calls.append(piece.path.name)
        if len(calls) == 3 and not interrupted:
            interrupted.append(piece)
            raise RuntimeError("killed")
        real(piece)

    monkeypatch.setattr(tokenize, "tokenize_piece", stop_at_the_third)
    with pytest.raises(RuntimeError, match="killed"):
        open_rows(data, tokenizer, tmp_path / "cache")
    assert not [path for path in (tmp_path / "cache").iterdir() if not path.name.startswith(".")]  # none visible
    calls.clear()
    rows = open_rows(data, tokenizer, tmp_path / "cache")
    assert "part-00000.arrow" not in calls and "part-00001.arrow" not in calls and calls  # only the rest redone
    assert as_lists(rows) == as_lists(open_rows(data, tokenizer, tmp_path / "clean"))


def test_a_bad_row_deep_in_a_piece_names_its_file_and_line(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(token_cache, "SEGMENT_BYTES", 2000)
    data = big_file(tmp_path / "fr.jsonl")
    lines = data.read_text().splitlines()
    lines[200] = json.dumps({"instruction": "x", "output": 3})
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"fr\.jsonl: line 201: field 'output' must be a string"):
        open_rows(data, tokenizer, tmp_path / "cache", num_proc=2)


def test_rows_left_out_are_counted_and_named(tokenizer, tmp_path):
    rows = sample_rows("fr")
    rows[0]["output"] = " "
    data = write_jsonl(tmp_path / "fr.jsonl", rows)
    summary = open_rows(data, tokenizer, tmp_path / "cache", cutoff_len=12).summary()
    assert summary["left_out"]["empty output"] == 1 and "fr:fr-0-0" in summary["first_left_out"]
    assert summary["rows"] + sum(summary["left_out"].values()) == 4


def test_parquet_is_read_in_batches_and_the_cache_loads_with_datasets(tokenizer, tmp_path):
    import datasets
    import pyarrow as pa

    rows = [row | {"id": f"{row['id']}-{n}"} for n in range(1100) for row in sample_rows("de")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "de.parquet", row_group_size=1000)
    records = load_records(str(tmp_path / "de.parquet"))
    assert len(records) == 4400 and records[4399].id == rows[4399]["id"]
    open_rows(tmp_path / "de.parquet", tokenizer, tmp_path / "cache")
    (part,) = (tmp_path / "cache").glob("*/part-*.arrow")
    loaded = datasets.Dataset.from_file(str(part))
    assert loaded.num_rows == 4400 and loaded.column_names == ["id", "lang", "input_ids", "masked"]


def test_two_nodes_share_one_cache_and_train_like_one_process(tiny_llama, lang_folder, tmp_path):
    """torchrun --nnodes 2 (one process each, gloo, on this machine) with the cache on 'shared storage': the
    cache is built once, and the adapter equals a single-process run's."""
    settings = dict(max_steps=3, global_batch_size=8, micro_batch_size=2, val_set_size=4, learning_rate=1e-2,
                    cache_dir=str(tmp_path / "shared-cache"))
    single = make_config(tiny_llama, lang_folder, tmp_path / "single", **{**settings, "cache_dir": str(tmp_path / "c")})
    from bactrian.train.finetune import finetune

    finetune(single)
    double = make_config(tiny_llama, lang_folder, tmp_path / "nodes", **settings)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
              "--master_addr", "127.0.0.1", "--master_port", "29541"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    nodes = [subprocess.Popen([*launch, "--node_rank", str(rank), "-m", "bactrian", "finetune", *flags(double)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert sum(output.count("Tokenizing") for output in outputs) == 1
    assert max_difference(adapter_weights(tmp_path / "single"), adapter_weights(tmp_path / "nodes")) <= 1e-5
    manifest = json.loads((tmp_path / "nodes" / "bactrian.json").read_text())
    assert manifest["examples"]["train_target_tokens_per_epoch"] > 0


def test_index_costs_nine_bytes_a_row(tokenizer, tmp_path):
    rows = open_rows(big_file(tmp_path / "fr.jsonl"), tokenizer, tmp_path / "cache")
    assert (rows.lengths.nbytes + rows.targets.nbytes + rows.lang_codes.nbytes) == 9 * len(rows)
    assert np.array_equal(rows.rows_in(["fr"]), np.arange(len(rows)))
    with pytest.raises(DataError, match="de asked for"):
        rows.rows_in(["de"])


def test_per_language_runs_and_reruns_tokenize_each_file_once(tiny_llama, lang_folder, tmp_path, caplog):
    from bactrian.train.finetune import finetune

    caplog.set_level("INFO")
    config = make_config(tiny_llama, lang_folder, tmp_path / "adapters", per_language=True, max_steps=1,
                         val_set_size=0, cache_dir=str(tmp_path / "cache"))
    finetune(config)
    assert caplog.text.count("Tokenizing") == 1 and "Tokenizing 3 source(s)" in caplog.text  # all languages, once
    caplog.clear()
    finetune(make_config(tiny_llama, lang_folder, tmp_path / "together", lang=["fr", "de"], max_steps=1,
                         val_set_size=0, cache_dir=str(tmp_path / "cache")))
    assert "Tokenizing" not in caplog.text


def test_a_hub_config_is_keyed_by_its_downloaded_revision(tokenizer, tmp_path, monkeypatch):
    import datasets

    published = {"rows": sample_rows("fr")}
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name, split: datasets.Dataset.from_list(
        published["rows"]))
    hub = token_cache.open_rows(sources("MBZUAI/Bactrian-X", ["fr"]), tokenizer, settings(), tmp_path / "cache", 1,
                                DistributedContext())
    assert len(hub) == 4 and hub.languages() == ["fr"]
    token_cache.open_rows(sources("MBZUAI/Bactrian-X", ["fr"]), tokenizer, settings(), tmp_path / "cache", 1,
                          DistributedContext())
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the same revision maps the same entry
    published["rows"] = sample_rows("fr", copies=2)  # the dataset is updated on the hub
    again = token_cache.open_rows(sources("MBZUAI/Bactrian-X", ["fr"]), tokenizer, settings(), tmp_path / "cache",
                                  1, DistributedContext())
    assert len(again) == 8 and len(list((tmp_path / "cache").iterdir())) == 2


@pytest.mark.parametrize("damage", ["piece cut to its schema", "meta undercounts pieces", "piece truncated",
                                    "meta not json", "piece missing"])
def test_a_damaged_entry_is_rebuilt_not_half_read(tokenizer, tmp_path, monkeypatch, caplog, damage):
    """A piece cut to its schema (320 bytes) or a meta.json with too few pieces trained on de+en without fr, and
    a truncated piece or invalid meta.json was a raw OSError / JSONDecodeError."""
    import logging

    monkeypatch.setattr(token_cache, "SEGMENT_BYTES", 2000)
    data = tmp_path / "data"
    data.mkdir()
    big_file(data / "fr.jsonl")
    whole = as_lists(open_rows(data, tokenizer, tmp_path / "cache"))
    (entry,) = [path for path in (tmp_path / "cache").iterdir() if path.is_dir()]
    pieces = sorted(entry.glob("part-*.arrow"))
    meta = json.loads((entry / "meta.json").read_text())
    if damage == "piece cut to its schema":
        import pyarrow as pa

        schema = pa.ipc.open_stream(pa.memory_map(str(pieces[-1]))).schema
        with pa.ipc.new_stream(str(pieces[-1]), schema):
            pass
    elif damage == "meta undercounts pieces":
        (entry / "meta.json").write_text(json.dumps({**meta, "pieces": meta["pieces"] - 1}))
    elif damage == "piece truncated":
        pieces[1].write_bytes(pieces[1].read_bytes()[:500])
    elif damage == "meta not json":
        (entry / "meta.json").write_text("{\"pieces\": ")
    else:
        pieces[0].unlink()
    with caplog.at_level(logging.WARNING, logger="bactrian.train.token_cache"):
        rebuilt = open_rows(data, tokenizer, tmp_path / "cache")
    assert "is damaged" in caplog.text and str(entry) in caplog.text
    assert as_lists(rebuilt) == whole


def test_a_file_changed_while_tokenized_is_never_cached_under_its_key(tokenizer, tmp_path, monkeypatch):
    """Truncated while being tokenized, then put back (same sha256): the entry kept the short read under the
    full file's key, and every rerun trained on the short data."""
    import os

    monkeypatch.setattr(token_cache, "SEGMENT_BYTES", 2000)
    data = tmp_path / "data"
    data.mkdir()
    path = big_file(data / "fr.jsonl")
    original = path.read_bytes()
    whole = as_lists(open_rows(data, tokenizer, tmp_path / "clean"))
    done = []
    real = tokenize.tokenize_piece

    def meddle(piece):
        real(piece)
        done.append(piece)
        if len(done) == 1:
            path.write_bytes(original[: len(original) // 3])
        if len(done) == 3:
            path.write_bytes(original)
            os.utime(path, ns=(time.time_ns(), time.time_ns()))

    import time

    monkeypatch.setattr(tokenize, "tokenize_piece", meddle)
    with pytest.raises(DataError, match="fr.jsonl changed while it was being tokenized"):
        open_rows(data, tokenizer, tmp_path / "cache")
    monkeypatch.setattr(tokenize, "tokenize_piece", real)
    assert as_lists(open_rows(data, tokenizer, tmp_path / "cache")) == whole
