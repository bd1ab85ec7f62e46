"""Checkpoints and the runs they belong to: impossible limits are errors, another run's checkpoints are never
resumed or pruned, per-language reruns retrain only what changed, and a checkpoint is flushed before it is renamed
(leftovers of a killed save are cleaned)."""

import logging
from pathlib import Path

import pytest

from bactrian.errors import BactrianError


def finetune_config(model, data, out, **overrides):
    from bactrian.train.config import FinetuneConfig

    settings = dict(base_model=str(model), data_path=[str(data)], output_dir=str(out), global_batch_size=4,
                    micro_batch_size=2, max_steps=4, val_set_size=0, warmup_steps=1, save_steps=2, save_total_limit=2,
                    learning_rate=1e-2, lora_dropout=0.0)
    settings.update(overrides)
    return FinetuneConfig(**settings)


@pytest.mark.parametrize("limit", [0, -1])
def test_impossible_checkpoint_limits_are_errors(tiny_llama, lang_folder, tmp_path, limit):
    from bactrian.train.finetune import finetune

    with pytest.raises(BactrianError, match=f"--save_total_limit {limit}: keep at least 1"):
        finetune(finetune_config(tiny_llama, lang_folder, tmp_path / "out", save_total_limit=limit))
    assert not (tmp_path / "out").exists()


def test_checkpoints_of_another_run_are_never_resumed_or_pruned(tiny_llama, lang_folder, tmp_path):
    from bactrian.train.finetune import finetune

    out = tmp_path / "out"
    finetune(finetune_config(tiny_llama, lang_folder, out, max_steps=6))  # leaves checkpoint-2 and -4
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-4"]
    with pytest.raises(BactrianError, match=r"checkpoint-2 belongs to another run \(learning_rate: 0.01 -> 0.02"):
        finetune(finetune_config(tiny_llama, lang_folder, out, max_steps=6, learning_rate=2e-2))
    with pytest.raises(BactrianError, match="lang: \\[\\] -> \\['de'\\].*max_steps: 6 -> 8"):
        finetune(finetune_config(tiny_llama, lang_folder, out, max_steps=8, lang=["de"],
                                 resume_from_checkpoint="auto"))
    (lang_folder / "fr.jsonl").write_text((lang_folder / "fr.jsonl").read_text().replace("chaud", "froid"))
    with pytest.raises(BactrianError, match=r"data file .*fr.jsonl changed"):
        finetune(finetune_config(tiny_llama, lang_folder, out, max_steps=6, resume_from_checkpoint="auto"))
    with pytest.raises(BactrianError, match=r"a checkpoint of another run \(data file .*fr.jsonl changed"):
        finetune(finetune_config(tiny_llama, lang_folder, tmp_path / "elsewhere", max_steps=6,
                                 resume_from_checkpoint=str(out / "checkpoint-4")))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == kept  # nothing pruned


def test_per_language_reruns_retrain_what_changed(tiny_llama, lang_folder, tmp_path, caplog):
    from bactrian.train.finetune import finetune

    out = tmp_path / "adapters"
    config = finetune_config(tiny_llama, lang_folder, out, per_language=True, lang=["de", "fr"], save_steps=0)
    first = finetune(config)["languages"]
    caplog.set_level(logging.INFO)
    (lang_folder / "fr.jsonl").write_text((lang_folder / "fr.jsonl").read_text().replace("chaud", "froid"))
    second = finetune(config)["languages"]
    assert second["de"] == first["de"] and "already trained, skipped (same settings and data)" in caplog.text
    assert "fr: trained by another run (data file" in caplog.text.replace(str(out) + "/", "")
    third = finetune(finetune_config(tiny_llama, lang_folder, out, per_language=True, lang=["de", "fr"],
                                     save_steps=0, max_steps=5))["languages"]
    assert third["de"]["steps"] == third["fr"]["steps"] == 5
    with pytest.raises(BactrianError, match="--per_language resumes each language"):
        finetune(finetune_config(tiny_llama, lang_folder, out, per_language=True,
                                 resume_from_checkpoint=str(out / "de")))


def test_checkpoints_are_flushed_before_they_are_renamed_and_leftovers_are_cleaned(tiny_llama, lang_folder, tmp_path,
                                                                                  monkeypatch):
    import os

    from bactrian.train.finetune import finetune

    out = tmp_path / "out"
    (out / ".checkpoint-7.partial").mkdir(parents=True)  # what a run killed mid-save leaves
    (out / ".adapter.partial").mkdir()
    events = []
    real_fsync, real_rename = os.fsync, Path.rename
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(Path, "rename", lambda self, target: events.append(("rename", str(self))) or
                        real_rename(self, target))
    finetune(finetune_config(tiny_llama, lang_folder, out, max_steps=4, save_steps=2))
    staging = str(out / ".checkpoint-2.partial")
    renamed = events.index(("rename", staging))
    flushed = {path for kind, path in events[:renamed] if kind == "fsync" and path.startswith(staging)}
    saved = {str(staging + "/" + p.name) for p in (out / "checkpoint-2").iterdir()}
    assert saved <= flushed and staging in flushed  # every file, and the folder itself
    assert not (out / ".checkpoint-7.partial").exists() and not (out / ".adapter.partial").exists()
