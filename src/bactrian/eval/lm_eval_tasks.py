"""lm-evaluation-harness task files for XCOPA read from local files, so that lm-eval can be run on exactly the
data `bactrian eval` reads (the parity test and the throughput benchmark use it)."""

from __future__ import annotations

from pathlib import Path


def write_local_xcopa_tasks(folder: Path, xcopa_dir: Path, langs: list[str]) -> list[str]:
    """Task YAMLs (lm-eval's own XCOPA prompt functions, our local JSONL files); returns the task names."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utils.py").write_text("from lm_eval.tasks.xcopa.utils import *  # noqa\n")
    for lang in langs:
        (folder / f"local_xcopa_{lang}.yaml").write_text(
            f"task: local_xcopa_{lang}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    validation: {xcopa_dir / f'val.{lang}.jsonl'}\noutput_type: multiple_choice\n"
            f"validation_split: validation\ndoc_to_text: !function utils.doc_to_text_{lang}\n"
            "doc_to_target: label\ndoc_to_choice: !function utils.doc_to_choice\nmetric_list:\n  - metric: acc\n")
    return [f"local_xcopa_{lang}" for lang in langs]
