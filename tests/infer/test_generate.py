"""`bactrian generate`: batched answers over a file, resumable without duplicates."""

import json
import subprocess
import sys

import pytest

from bactrian.errors import ConfigError, DataError
from bactrian.infer.config import GenerateConfig
from bactrian.infer.generate import generate

from support import write_jsonl

pytestmark = pytest.mark.dtype_sensitive  # runs under both choices of `auto` in .ci/run


@pytest.fixture()
def questions(tmp_path):
    rows = [{"id": f"q{i}", "instruction": f"Question number {i}?", "input": "" if i % 2 else "context"}
            for i in range(7)]
    return write_jsonl(tmp_path / "questions.jsonl", rows)


def config(tiny_llama, tiny_adapters, questions, output, **extra):
    return GenerateConfig(base_model=str(tiny_llama), lora_weights=[f"fr={tiny_adapters['fr']}",
                          f"de={tiny_adapters['de']}"], input_file=str(questions), output_file=str(output),
                          adapter=["fr", "de"], decode_batch_size=3, max_new_tokens=6, **extra)


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_row_with_every_adapter_then_nothing_twice(tiny_llama, tiny_adapters, questions, tmp_path):
    output = tmp_path / "out.jsonl"
    assert generate(config(tiny_llama, tiny_adapters, questions, output)) == 14
    rows = rows_of(output)
    assert sorted((r["id"], r["model"]) for r in rows) == sorted((f"q{i}", m) for i in range(7) for m in ("fr", "de"))
    assert all(r["finish_reason"] in ("stop", "length") and r["generation"]["max_new_tokens"] == 6 for r in rows)
    assert generate(config(tiny_llama, tiny_adapters, questions, output)) == 0
    assert rows_of(output) == rows
    whole = output.read_bytes()
    output.write_bytes(whole[:-25])  # a crash in the middle of the last line
    assert generate(config(tiny_llama, tiny_adapters, questions, output)) == 1
    assert rows_of(output) == rows


def test_results_do_not_depend_on_batch_size(tiny_llama, tiny_adapters, questions, tmp_path):
    one = tmp_path / "one.jsonl"
    generate(config(tiny_llama, tiny_adapters, questions, one, temperature=0.8))
    many = tmp_path / "many.jsonl"
    cfg = config(tiny_llama, tiny_adapters, questions, many, temperature=0.8)
    cfg.decode_batch_size = 7
    generate(cfg)
    assert sorted(map(json.dumps, rows_of(one))) == sorted(map(json.dumps, rows_of(many)))


def test_bad_input_is_named(tiny_llama, tiny_adapters, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok"}\n{"input": "no instruction"}\n')
    with pytest.raises(DataError, match="bad.jsonl: line 2: field 'instruction' is missing"):
        generate(config(tiny_llama, tiny_adapters, bad, tmp_path / "o.jsonl"))
    good = write_jsonl(tmp_path / "good.jsonl", [{"instruction": "x"}])
    with pytest.raises(ConfigError, match="--adapter it: not loaded"):
        generate(GenerateConfig(base_model=str(tiny_llama), input_file=str(good),
                                     output_file=str(tmp_path / "o.jsonl"), adapter=["it"]))


def test_resume_after_a_crash_that_tore_a_line(tiny_llama, tiny_adapters, tmp_path):
    """A run killed while writing: 37 complete rows and half of the 38th on disk (made deterministically, not by
    killing at a random time). The same command resumes: the torn row is redone, none is written twice."""
    rows = [{"id": f"r{i}", "instruction": f"Write item {i}."} for i in range(60)]
    questions = write_jsonl(tmp_path / "many.jsonl", rows)
    reference = tmp_path / "reference.jsonl"
    generate(config(tiny_llama, tiny_adapters, questions, reference))
    lines = reference.read_bytes().splitlines(keepends=True)
    output = tmp_path / "crashed.jsonl"
    output.write_bytes(b"".join(lines[:37]) + lines[37][: len(lines[37]) // 2])
    args = [sys.executable, "-m", "bactrian", "generate", "--base_model", str(tiny_llama), "--lora_weights",
            f"fr={tiny_adapters['fr']}", "--lora_weights", f"de={tiny_adapters['de']}", "--input_file",
            str(questions), "--output_file", str(output), "--adapter", "fr,de", "--batch_size", "3",
            "--max_new_tokens", "6"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "dropping an incomplete last line" in done.stderr
    final = rows_of(output)
    assert final[:37] == rows_of(reference)[:37]  # what was complete stays as it was
    assert len(final) == 120 and len({(r["id"], r["model"]) for r in final}) == 120
    assert outputs_by_key(final) == outputs_by_key(rows_of(reference))


def outputs_by_key(rows):
    return {(r["id"], r["model"]): r["output"] for r in rows}


def test_a_rerun_with_other_settings_is_refused_not_mixed(tiny_llama, tiny_adapters, questions, tmp_path):
    output = tmp_path / "out.jsonl"
    generate(config(tiny_llama, tiny_adapters, questions, output))
    written = output.read_bytes()
    with pytest.raises(ConfigError, match="answers were generated with other settings"):
        generate(config(tiny_llama, tiny_adapters, questions, output, temperature=0.7))
    assert output.read_bytes() == written


def test_the_language_guard_keeps_rows_in_their_language_and_reports(drifting_engine, tmp_path):
    from support import DRIFT_FRENCH, DRIFT_PROMPT

    rows = write_jsonl(tmp_path / "in.jsonl", [{"id": "q", "lang": "fr", "instruction": DRIFT_PROMPT},
                                               {"id": "told", "instruction": DRIFT_PROMPT}])
    output = tmp_path / "out.jsonl"
    settings = dict(base_model="unused", input_file=str(rows), output_file=str(output), adapter=["drift"],
                    max_new_tokens=80)
    assert generate(GenerateConfig(**settings, language_guard=True), drifting_engine) == 2
    answers = {row["id"]: row for row in map(json.loads, output.read_text().splitlines())}
    for row in answers.values():  # with a lang, and told from the prompt (French) as `auto` tells it
        assert row["output"] == DRIFT_FRENCH and row["guard"]["lang"] == "fr" and row["guard"]["retries"] == 1
        assert row["generation"]["language_guard_retries"] == 2
    with pytest.raises(ConfigError, match="other settings"):  # guarded answers are not mixed with unguarded ones
        generate(GenerateConfig(**settings), drifting_engine)
