"""`bactrian data prefs --guard_pairs`: the pairs `serve --guard_pairs_file` appends (the language guard's
corrected answer chosen, its drifting attempt rejected) become `language_guard` pairs, alone (no model loaded) or
beside the pairs prefs builds from data, and `finetune --method dpo` trains on the folder."""

import json

import pytest

from bactrian.cli import main
from bactrian.data.prefs import PrefsConfig, prefs
from bactrian.errors import ConfigError, DataError
from bactrian.train.finetune import finetune

from support import make_config, write_jsonl

FRENCH = "Le ciel est très bleu aujourd'hui.\nC'est une bonne journée pour marcher."
DRIFTED = "The sky is very blue today.\nC'est une bonne journée pour marcher."
GERMAN = "Der Himmel ist heute sehr blau.\nEs ist ein guter Tag für einen Spaziergang."
DRIFTED_DE = "The sky is very blue today.\nEs ist ein guter Tag für einen Spaziergang."


def guard_pair(pair_id: str, lang: str, instruction: str, chosen: str, rejected: str) -> dict:
    """One line as `serve --guard_pairs_file` writes it."""
    return {"id": pair_id, "lang": lang, "instruction": instruction, "input": "", "chosen": chosen,
            "rejected": rejected, "kind": "language_guard", "adapter": "drift", "created": 1767225600}


def no_model(monkeypatch):
    import bactrian.data.prefs as module

    monkeypatch.setattr(module, "build_engine", lambda config: pytest.fail("no model is loaded for guard pairs"))


def test_guard_pairs_alone_make_a_preference_dataset_dpo_trains_on(tiny_llama, tmp_path, monkeypatch):
    """Two files, filtered to --lang, each pair once; a repeated id in one language becomes <id>-2; no model."""
    import datasets

    no_model(monkeypatch)
    first = write_jsonl(tmp_path / "pairs.jsonl", [
        guard_pair("chatcmpl-1", "fr", "Décris le ciel.", FRENCH, DRIFTED),
        guard_pair("chatcmpl-2", "de", "Beschreibe den Himmel.", GERMAN, DRIFTED_DE),
        guard_pair("chatcmpl-3", "en", "Describe the sky.", "It is blue.", "Il est bleu."),
        *[guard_pair(f"chatcmpl-{n}", "fr", f"Décris le ciel n° {n}.", FRENCH, DRIFTED) for n in range(4, 10)]])
    (tmp_path / "later").mkdir()
    second = write_jsonl(tmp_path / "later" / "pairs.jsonl", [
        guard_pair("chatcmpl-1", "fr", "Décris le ciel.", FRENCH, DRIFTED),  # the same pair again
        guard_pair("chatcmpl-1", "fr", "Décris la mer.", FRENCH, DRIFTED),  # another pair, the same id
        guard_pair("chatcmpl-1", "de", "Beschreibe das Meer.", GERMAN, DRIFTED_DE)])  # another language: kept
    out = tmp_path / "prefs"
    report = prefs(PrefsConfig(guard_pairs=[str(first), str(second)], lang=["fr", "de"], output_dir=str(out)))

    assert report["pairs"] == 10 and report["answered"] == 0
    assert report["languages"]["fr"]["language_guard"] == 8 and report["languages"]["de"]["language_guard"] == 2
    assert report["guard_pairs"] == {"read": 12, "other_languages": 1, "duplicates": 1, "renamed_ids": 1}
    fr = datasets.load_dataset("parquet", data_files=str(out / "fr.parquet"), split="train")
    assert fr.column_names == ["id", "lang", "instruction", "input", "chosen", "rejected", "kind"]
    assert fr["id"][:1] + fr["id"][-1:] == ["chatcmpl-1", "chatcmpl-1-2"] and len(set(fr["id"])) == 8
    assert set(fr["kind"]) == {"language_guard"} and fr["chosen"][0] == FRENCH and fr["rejected"][0] == DRIFTED
    de = datasets.load_dataset("parquet", data_files=str(out / "de.parquet"), split="train")
    assert de["id"] == ["chatcmpl-2", "chatcmpl-1"]
    assert not (out / "en.parquet").exists()
    assert json.loads((out / "work" / "report.json").read_text()) == report
    page = (out / "report.md").read_text()
    assert "| fr | 0 | 8 | 0 | 0 | 0 | 0 | 0 | 8 |" in page and "1 given a new id" in page

    finetune(make_config(tiny_llama, out, tmp_path / "dpo", method="dpo", val_set_size=0, max_steps=2))
    manifest = json.loads((tmp_path / "dpo" / "bactrian.json").read_text())
    assert manifest["config"]["method"] == "dpo" and manifest["languages"] == ["de", "fr"]


def test_guard_pairs_join_the_pairs_built_from_data(tiny_llama, lang_folder, tmp_path):
    """The model's answers cut off at 4 tokens make a pair of every row; a guard pair whose id a data pair of its
    language holds gets <id>-2, the data pair keeps its own."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [guard_pair("fr-0-0", "fr", "Décris le ciel.", FRENCH, DRIFTED)])
    out = tmp_path / "prefs"
    report = prefs(PrefsConfig(base_model=str(tiny_llama), data_path=[str(lang_folder)], guard_pairs=[str(pairs)],
                               lang=["fr"], rows_per_lang=2, max_new_tokens=4, output_dir=str(out)))
    assert report["answered"] == 2 and report["pairs"] == 3 and report["languages"]["fr"]["language_guard"] == 1
    assert report["guard_pairs"]["renamed_ids"] == 1
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "fr.parquet").to_pylist()
    assert [(row["id"], row["kind"] == "language_guard") for row in rows] == [
        ("fr-0-0", False), ("fr-0-1", False), ("fr-0-0-2", True)]


def test_bad_guard_pairs_fail_with_one_line_naming_file_line_and_field(tmp_path, capsys, monkeypatch):
    no_model(monkeypatch)
    good = guard_pair("a", "fr", "Décris le ciel.", FRENCH, DRIFTED)
    cases = {"rejected": {**good, "rejected": None}, "lang": {**good, "lang": "xx"},
             "chosen": {key: good[key] for key in ("id", "lang", "instruction")}}  # an SFT row is no pair
    for field, bad in cases.items():
        path = write_jsonl(tmp_path / f"{field}.jsonl", [good, bad])
        with pytest.raises(DataError, match=rf"{field}.jsonl: line 2: field '{field}'"):
            prefs(PrefsConfig(guard_pairs=[str(path)], output_dir=str(tmp_path / field)))
    assert main(["data", "prefs", "--guard_pairs", str(tmp_path / "rejected.jsonl"),
                 "--output_dir", str(tmp_path / "cli")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"bactrian data prefs: error: {tmp_path / 'rejected.jsonl'}: line 2: field 'rejected' is missing."]
    with pytest.raises(DataError, match="no such file"):
        prefs(PrefsConfig(guard_pairs=[str(tmp_path / "absent.jsonl")], output_dir=str(tmp_path / "absent")))
    with pytest.raises(ConfigError, match="--data_path is required .* unless --guard_pairs"):
        prefs(PrefsConfig(output_dir=str(tmp_path / "nothing")))
