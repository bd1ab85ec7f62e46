"""Shared fixtures, built on tests/support.py: tiny llama- and gemma3-shaped models with a small byte-level BPE
tokenizer (no downloads), two LoRA adapters on the llama, the engine that serves them, and small multilingual
instruction files."""

import os
from pathlib import Path

# The suite runs on the CPU on any machine (its exact properties are fp32's on a CPU): the GPUs are hidden before
# torch is imported, here and in every process a test starts. BACTRIAN_TEST_GPU=1 shows them to `pytest -m gpu`.
if os.environ.get("BACTRIAN_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402

from support import SAMPLE, build_model, make_adapter, make_drifting_adapter, sample_rows, write_jsonl  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-gemma3"), "gemma3")


@pytest.fixture()
def lang_folder(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for lang in SAMPLE:
        write_jsonl(folder / f"{lang}.jsonl", sample_rows(lang, copies=4))
    return folder


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep each test's cache apart, except the embedded model cache (expensive, shared on purpose)."""
    monkeypatch.setenv("BACTRIAN_HOME", os.environ.get("BACTRIAN_HOME", str(Path.home() / ".cache" / "bactrian")))


@pytest.fixture(scope="session")
def tiny_adapters(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {lang: make_adapter(tiny_llama, root / lang, [lang], seed)
            for seed, lang in enumerate(("fr", "de"), start=1)}


@pytest.fixture(scope="module")
def engine(tiny_llama, tiny_adapters):
    """The tiny llama with both adapters (`fr` named by its spec, `de` by its manifest), in fp32."""
    from bactrian.infer.engine import Engine

    return Engine(str(tiny_llama), [f"fr={tiny_adapters['fr']}", str(tiny_adapters["de"])], dtype="float32")


@pytest.fixture(scope="session")
def drifting_engine(tiny_llama, tmp_path_factory):
    """The tiny llama with adapter `drift`, which answers support.DRIFT_PROMPT (French) in English unless the
    language guard keeps it in French (fp32)."""
    from bactrian.infer.engine import Engine

    adapter = make_drifting_adapter(tiny_llama, tmp_path_factory.mktemp("drift") / "drift")
    return Engine(str(tiny_llama), [f"drift={adapter}"], dtype="float32")
