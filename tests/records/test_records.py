import json

import pytest

from bactrian.errors import DataError
from bactrian.records import load_records

from support import needs_shared_data, sample_rows, write_jsonl


def test_jsonl_with_null_missing_and_empty_input(tmp_path):
    path = tmp_path / "fr.jsonl"
    path.write_text(
        '{"instruction": "a", "input": null, "output": "x"}\n'
        '{"instruction": "b", "output": "y"}\n\n'
        '{"instruction": "c", "input": "", "output": "z", "id": "mine"}\n', encoding="utf-8")
    records = load_records(str(path))
    assert [r.input for r in records] == ["", "", ""]
    assert [r.lang for r in records] == ["fr"] * 3
    assert [r.id for r in records] == ["fr-0", "fr-1", "mine"]


def test_json_array_parquet_and_datasets_folder_read_the_same(tmp_path):
    import datasets

    rows = sample_rows("de")
    (tmp_path / "de.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "de.parquet"))
    datasets.Dataset.from_list([{**row, "lang": "de"} for row in rows]).save_to_disk(str(tmp_path / "saved"))
    from_json = load_records(str(tmp_path / "de.json"))
    assert from_json == load_records(str(tmp_path / "de.parquet"))
    assert from_json == load_records(str(tmp_path / "saved"))
    assert from_json[0].instruction == "Nenne eine Grundfarbe."


def test_language_folder_and_lang_filter(lang_folder):
    records = load_records(str(lang_folder))
    assert {r.lang for r in records} == {"en", "fr", "de"}
    only = load_records(str(lang_folder), ["fr"])
    assert {r.lang for r in only} == {"fr"} and len(only) == 16


def test_language_missing_from_data_is_an_error(lang_folder):
    with pytest.raises(DataError, match="sw asked for with --lang but not found"):
        load_records(str(lang_folder), ["fr", "sw"])


def test_several_data_paths(tmp_path):
    a = write_jsonl(tmp_path / "en.jsonl", sample_rows("en"))
    b = write_jsonl(tmp_path / "fr.jsonl", sample_rows("fr"))
    assert len(load_records([str(a), str(b)])) == 8


def test_lang_from_field_or_single_lang_flag(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{**sample_rows("en")[0], "lang": "en"},
                                                   {**sample_rows("de")[0], "lang": "de"}])
    assert [r.lang for r in load_records(str(path))] == ["en", "de"]
    plain = write_jsonl(tmp_path / "alpaca_data.jsonl", sample_rows("en"))
    with pytest.raises(DataError, match=r"alpaca_data.jsonl: line 1: field 'lang' is missing"):
        load_records(str(plain))
    assert {r.lang for r in load_records(str(plain), ["en"])} == {"en"}


TWO = '{"instruction": "a", "output": "x"}\n'


@pytest.mark.parametrize("content, message", [
    (TWO + '{"instruction": "b", "output": 3}\n', r"line 2: field 'output' must be a string"),
    (TWO + '{"output": "y"}\n', r"line 2: field 'instruction' is missing"),
    (TWO + '{"instruction": "", "output": "y"}\n', r"line 2: field 'instruction' is empty"),
    (TWO + '\n{"instruction": "b",\n', r"line 3: not valid JSON"),
    ('["not", "an", "object"]\n', r"line 1: expected an object"),
])
def test_malformed_jsonl_names_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "es.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"es.jsonl: {message}"):
        load_records(str(path))


def test_malformed_json_array_names_record_and_line(tmp_path):
    path = tmp_path / "it.json"
    path.write_text('[\n  {"instruction": "a", "output": "x"},\n  {"instruction": "b", "input": 5, "output": "y"}\n]')
    with pytest.raises(DataError, match=r"it.json: record 1 \(line 3\): field 'input' must be a string"):
        load_records(str(path))


def test_malformed_parquet_row(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"instruction": "a", "output": "x"}, {"instruction": "b", "output": None}]
                               ).to_parquet(str(tmp_path / "pt.parquet"))
    with pytest.raises(DataError, match=r"pt.parquet: row 1: field 'output' is missing"):
        load_records(str(tmp_path / "pt.parquet"))


def test_rows_with_empty_output_are_left_out_and_reported(tmp_path, caplog):
    path = tmp_path / "ja.jsonl"
    path.write_text('{"instruction": "a", "output": "x"}\n{"instruction": "b", "output": " "}\n')
    assert [r.id for r in load_records(str(path))] == ["ja-0"]
    assert "Left out 1 record(s) with an empty output: ja:ja-1" in caplog.text


def test_empty_data_and_missing_path(tmp_path):
    (tmp_path / "en.jsonl").write_text("\n")
    with pytest.raises(DataError, match="No instruction records"):
        load_records(str(tmp_path / "en.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        load_records(str(tmp_path / "missing.jsonl"))


def test_hub_dataset_id_calls_datasets_once_per_language(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return [{"instruction": f"q-{name}", "input": "", "output": "a", "id": "alpaca-1"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = load_records("MBZUAI/Bactrian-X", ["fr", "de"])
    assert calls == [("MBZUAI/Bactrian-X", "fr", "train"), ("MBZUAI/Bactrian-X", "de", "train")]
    assert [(r.lang, r.id) for r in records] == [("fr", "alpaca-1"), ("de", "alpaca-1")]
    with pytest.raises(DataError, match="needs --lang"):
        load_records("MBZUAI/Bactrian-X")


def test_self_instruct_seed_format_gives_one_record_per_instance(tmp_path):
    path = tmp_path / "seed.jsonl"
    path.write_text(json.dumps({"id": "seed_task_0", "instruction": "Sort", "instances": [
        {"input": "b a", "output": "a b"}, {"input": "d c", "output": "c d"}], "is_classification": False}) + "\n")
    records = load_records(str(path), ["en"])
    assert [(r.id, r.input, r.output) for r in records] == [("seed_task_0-0", "b a", "a b"),
                                                             ("seed_task_0-1", "d c", "c d")]


def test_real_seed_tasks_and_multialpaca():
    seeds = needs_shared_data("instructions", "self-instruct-en", "seed_tasks.jsonl")
    records = load_records(str(seeds), ["en"])
    assert len(records) >= 175 and all(r.lang == "en" for r in records)
    folder = needs_shared_data("instructions", "multialpaca")
    spanish = load_records(str(folder), ["es"])
    assert len(spanish) == sum(1 for line in (folder / "es.jsonl").open() if line.strip())
    assert any(r.input == "" for r in spanish)


def test_a_lone_surrogate_in_a_row_names_its_file_line_and_field(tmp_path):
    """It was a raw UnicodeEncodeError from deep inside tokenizing or writing."""
    from bactrian.records import read_rows

    path = tmp_path / "fr.jsonl"
    path.write_text('{"instruction": "ok", "output": "fine"}\n{"instruction": "bad \\ud800 row", "output": "x"}\n')
    with pytest.raises(DataError, match=r"fr.jsonl: line 2: field 'instruction' holds a lone surrogate"):
        read_rows(str(path))


def test_every_reader_gives_a_row_the_same_id_an_explicit_0_kept_a_missing_one_defaulted(tmp_path):
    """`id: 0` was "0" for training but "fr-0" for the data commands: one validator now decides for both."""
    from bactrian.records import read_rows

    path = write_jsonl(tmp_path / "fr.jsonl", [
        {"id": 0, "instruction": "a", "output": "x"}, {"id": None, "instruction": "b", "output": "y"},
        {"id": "", "instruction": "c", "output": "z"}, {"instruction": "d", "output": "w"},
        {"id": "mine", "instruction": "e", "output": "v"}])
    expected = ["0", "fr-1", "fr-2", "fr-3", "mine"]
    assert [r.id for r in load_records(str(path))] == expected
    assert [row["id"] for row in read_rows(str(path))] == expected
