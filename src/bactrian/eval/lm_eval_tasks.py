"""lm-evaluation-harness task files for XCOPA and MGSM read from local files, so that lm-eval can be run on exactly
the data `bactrian eval` reads (the parity tests and the benchmarks use them)."""

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


def write_local_mgsm_tasks(folder: Path, mgsm_dir: Path, langs: list[str]) -> list[str]:
    """lm-eval's own mgsm_direct_<lang> tasks (prompt, stop strings, filters, metric) on the published TSV files:
    only where the data comes from changes (its `answer` column, empty in the test split, is added as None)."""
    import lm_eval

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mgsm_local.py").write_text(
        "def add_answer(dataset):\n    return dataset.add_column('answer', [None] * len(dataset))\n")
    tasks_dir = Path(lm_eval.__file__).parent / "tasks" / "mgsm" / "direct"
    for lang in langs:
        (folder / f"local_mgsm_direct_{lang}.yaml").write_text(
            f"include: {tasks_dir / f'mgsm_direct_{lang}.yaml'}\ntask: local_mgsm_direct_{lang}\ntag: []\n"
            "dataset_path: csv\ndataset_name: null\ndataset_kwargs:\n  data_files:\n"
            f"    test: {mgsm_dir / f'mgsm_{lang}.tsv'}\n  delimiter: \"\\t\"\n  quoting: 3\n"
            "  column_names: [question, answer_number]\ntraining_split: null\n"
            "process_docs: !function mgsm_local.add_answer\n")
    return [f"local_mgsm_direct_{lang}" for lang in langs]
