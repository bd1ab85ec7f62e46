"""Shared fixtures: tiny llama- and gemma3-shaped models with a small byte-level BPE tokenizer, built from
configs (no downloads), plus small multilingual instruction files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SAMPLE = {
    "en": [("Name a primary colour.", "", "Red is a primary colour."),
           ("Add the numbers.", "2 and 3", "2 + 3 = 5."),
           ("Give the opposite of hot.", "", "The opposite of hot is cold."),
           ("Translate to French.", "cat", "chat")],
    "fr": [("Nomme une couleur primaire.", "", "Le rouge est une couleur primaire."),
           ("Additionne les nombres.", "2 et 3", "2 + 3 = 5."),
           ("Donne le contraire de chaud.", "", "Le contraire de chaud est froid."),
           ("Écris une salutation.", "", "Bonjour, comment allez-vous ?")],
    "de": [("Nenne eine Grundfarbe.", "", "Rot ist eine Grundfarbe."),
           ("Addiere die Zahlen.", "2 und 3", "2 + 3 = 5."),
           ("Nenne das Gegenteil von heiß.", "", "Das Gegenteil von heiß ist kalt."),
           ("Schreibe einen Gruß.", "", "Guten Tag, wie geht es Ihnen?")],
}


def sample_rows(lang: str, copies: int = 1) -> list[dict]:
    return [{"id": f"{lang}-{n}-{i}", "instruction": ins, "input": inp, "output": out}
            for n in range(copies) for i, (ins, inp, out) in enumerate(SAMPLE[lang])]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _build_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(item) for rows in SAMPLE.values() for item in rows] * 5
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(folder)


def _build_model(folder: Path, arch: str, hidden: int = 32, initializer_range: float = 0.02,
                 tie: bool | None = None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

    _build_tokenizer(folder)
    common = dict(vocab_size=400, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, pad_token_id=0,
                  eos_token_id=1, bos_token_id=2, max_position_embeddings=512, initializer_range=initializer_range)
    if arch == "llama":
        config = LlamaConfig(**common, tie_word_embeddings=bool(tie))
    else:
        config = Gemma3TextConfig(**common, sliding_window=64, query_pre_attn_scalar=hidden // 4,
                                  tie_word_embeddings=True if tie is None else tie)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return _build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    return _build_model(tmp_path_factory.mktemp("tiny-gemma3"), "gemma3")


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


def needs_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is not beside this checkout)")
    return path


def make_adapter(base: Path, folder: Path, languages: list[str], seed: int, r: int = 4,
                 targets: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A PEFT LoRA adapter with random non-zero weights and a bactrian.json naming its languages."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bactrian.manifest import write_manifest
    from bactrian.prompts import load_template

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(folder)
    write_manifest(folder, "adapter", {"base_model": str(base)}, template=load_template("bactrian").to_dict(),
                   languages=languages)
    return folder


@pytest.fixture(scope="session")
def tiny_adapters(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {lang: make_adapter(tiny_llama, root / lang, [lang], seed)
            for seed, lang in enumerate(("fr", "de"), start=1)}
