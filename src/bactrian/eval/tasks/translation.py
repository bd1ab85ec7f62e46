"""Translation, English to each language and back: NTREX-128 (newstest2019-*.txt) and FLORES-200 devtest files,
line-aligned; scored by sacrebleu's corpus chrF++ and BLEU with bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ... import languages
from ...errors import ConfigError, DataError
from .. import metrics
from .base import GenerativeTask, Metric, Prompt
from .registry import register
from .sources import files_below

NTREX_NAMES = {"aze-Latn": "az", "fas": "fa", "zho-CN": "zh", "mon": "mn", "nep": "ne", "pus": "ps", "swa": "sw",
               "lav": "lv", "est": "et", "tgl": "tl", "fil": "tl", "msa": None}  # others: the FLORES code's prefix


def ntrex_files(root: Path | None) -> tuple[Path | None, dict[str, Path]]:
    """NTREX-128's English source and its reference file per Bactrian-X language."""
    by_prefix = {lang.flores.split("_")[0]: lang.code for lang in languages.LANGUAGES}
    source, references = None, {}
    for path in files_below(root, "newstest2019-*.txt"):
        name = path.name.removeprefix("newstest2019-").removesuffix(".txt")
        if name == "src.eng":
            source = path
        elif name.startswith("ref."):
            code = NTREX_NAMES.get(name[4:], by_prefix.get(name[4:]))
            if code and code not in references:
                references[code] = path
    return source, references


def flores_files(root: Path | None, split: str = "devtest") -> tuple[Path | None, dict[str, Path]]:
    """FLORES-200's English sentences and each language's (`<code>.<split>` files, line-aligned)."""
    by_code = {path.name.removesuffix(f".{split}"): path for path in files_below(root, f"*.{split}")}
    return by_code.get("eng_Latn"), {lang.code: by_code[lang.flores] for lang in languages.LANGUAGES
                                     if lang.flores in by_code and lang.code != "en"}


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _translation_reader(files: Callable[[Path | None], tuple[Path | None, dict[str, Path]]], name: str):
    def read(root: Path | None, langs: list[str], _: str) -> list[Prompt]:
        source, references = files(root)
        if source is None or not references:
            raise DataError(f"{name}: no English source and reference files under --data_dir {root}.")
        english = _lines(source)
        prompts = []
        for lang in langs or sorted(references):
            if lang not in references:
                raise ConfigError(f"{name}: no reference file for {lang!r} under {root}.")
            other = _lines(references[lang])
            if len(other) != len(english):
                raise DataError(f"{references[lang]}: {len(other)} lines, but {source} has {len(english)}.")
            prompts += _directions(lang, english, other, name)
        return prompts
    return read


def _directions(lang: str, english: list[str], other: list[str], name: str) -> list[Prompt]:
    prompts = []
    for source_lang, target_lang, sources, targets in (("en", lang, english, other), (lang, "en", other, english)):
        instruction = (f"Translate the following text from {languages.get(source_lang).name} into "
                       f"{languages.get(target_lang).name}.")
        prompts += [Prompt(f"{name}-{source_lang}-{target_lang}-{index}", target_lang, instruction, text, reference,
                           f"{source_lang}-{target_lang}")
                    for index, (text, reference) in enumerate(zip(sources, targets)) if text.strip()]
    return prompts


def _translation_score(prompt: Prompt, answer: str) -> dict[str, Any]:
    from sacrebleu.metrics import CHRF

    return {"hypothesis": answer.strip(), "reference": prompt.reference, "target": prompt.lang,
            "sentence_chrf++": CHRF(word_order=2).sentence_score(answer.strip(), [prompt.reference]).score}


def _translation_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return metrics.translation_scores([row["hypothesis"] for row in rows], [row["reference"] for row in rows],
                                      rows[0]["target"])


def _translation_task(name: str, files) -> GenerativeTask:
    return GenerativeTask(name, _translation_reader(files, name), _translation_score, _translation_summary,
                          (Metric("chrf++", "chrF++", 1.0), Metric("bleu", "BLEU", 1.0)), max_new_tokens=192,
                          stop=lambda lang: ["\n"],
                          notes="sacrebleu corpus chrF++ and BLEU (13a; zh: zh; ja, th, my, km: char), 95% "
                                "intervals by sacrebleu's bootstrap; English to each language and back.")


register(_translation_task("ntrex", ntrex_files))
register(_translation_task("flores", flores_files))
