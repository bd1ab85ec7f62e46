"""Multiple-choice tasks as (context, continuations, label) items, read from the files the datasets are
published in, or from the hub on users' machines. Prompt formats follow lm-evaluation-harness."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .. import languages
from ..errors import ConfigError, DataError
from ..records import read_jsonl

# lm-evaluation-harness's XCOPA connectors (cause, effect) per language
XCOPA_CONNECTORS = {
    "et": ("sest", "seetõttu"), "ht": ("poukisa", "donk sa"), "it": ("perché", "quindi"), "id": ("karena", "maka"),
    "qu": ("imataq", "chaymi"), "sw": ("kwa sababu", "kwa hiyo"), "zh": ("因为", "所以"), "ta": ("காரணமாக", "எனவே"),
    "th": ("เพราะ", "ดังนั้น"), "tr": ("çünkü", "bu yüzden"), "vi": ("bởi vì", "vì vậy"),
}
XWINOGRAD_NAMES = {"ja": "jp"}  # the dataset's own name for Japanese
HUB_IDS = {"xcopa": "cambridgeltl/xcopa", "xstorycloze": "juletxara/xstory_cloze", "xwinograd": "Muennighoff/xwinograd",
           "sib200": "Davlan/sib200", "belebele": "facebook/belebele"}


@dataclass(frozen=True)
class Item:
    """One question: for each choice a context and the continuation scored after it, and the right choice."""

    id: str
    lang: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    label: int
    choice_texts: tuple[str, ...]  # what acc_norm divides by (the choice strings, as lm-eval does)


def shared(context: str, continuations: list[str]) -> tuple[str, ...]:
    return (context,) * len(continuations)


def load_task(task: str, data_dir: str, langs: list[str]) -> dict[str, list[Item]]:
    """Items per language for a named task or a generic task file (.jsonl / .yaml)."""
    readers = {"xcopa": _xcopa, "xstorycloze": _xstorycloze, "xwinograd": _xwinograd, "sib200": _sib200,
               "belebele": _belebele}
    if task in readers:
        return readers[task](Path(data_dir) if data_dir else None, langs)
    path = Path(task)
    if path.suffix in (".jsonl", ".yaml", ".yml") and path.is_file():
        return _generic(path)
    raise ConfigError(f"Unknown task {task!r}: use xcopa, xstorycloze, xwinograd, sib200, belebele, a generative "
                      "task (confusion, mgsm_direct, mgsm_cot, ntrex, flores, xquad, mlqa) or a .jsonl/.yaml file.")


def _find(root: Path | None, task: str, patterns: list[str]) -> Path | None:
    if root is None:
        return None
    for pattern in patterns:
        found = sorted(root.glob(pattern)) + sorted(root.glob(f"{task}/{pattern}")) + \
            sorted(root.glob(f"{task}/**/{pattern}"))
        if found:
            return found[0]
    return None


def hub_rows(dataset: str, config: str | None, split: str) -> list[dict]:
    """The rows of a hub dataset's config and split (what a task reads when --data_dir has no file for it)."""
    import datasets

    try:
        return list(datasets.load_dataset(dataset, config, split=split))
    except Exception as exc:  # network, auth, missing config: one clear message
        raise DataError(f"No local file under --data_dir for {dataset} {config or ''} and the hub dataset could "
                        f"not be loaded ({exc}).") from exc


def _hub_rows(task: str, config: str, split: str) -> list[dict]:
    return hub_rows(HUB_IDS[task], config, split)


def _jsonl(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path)]


def _field(row: dict, name: str, source: object, where: str) -> object:
    if name not in row or row[name] is None:
        raise DataError(f"{source}: {where}: field '{name}' is missing.")
    return row[name]


def _xcopa(root: Path | None, langs: list[str]) -> dict[str, list[Item]]:
    langs = langs or sorted(XCOPA_CONNECTORS)
    items: dict[str, list[Item]] = {}
    for lang in langs:
        if lang not in XCOPA_CONNECTORS:
            raise ConfigError(f"xcopa has no language {lang!r}; it has {', '.join(sorted(XCOPA_CONNECTORS))}.")
        path = _find(root, "xcopa", [f"val.{lang}.jsonl", f"*.{lang}.jsonl"])
        rows = _jsonl(path) if path else _hub_rows("xcopa", lang, "validation")
        cause, effect = XCOPA_CONNECTORS[lang]
        items[lang] = []
        for index, row in enumerate(rows):
            where = f"line {index + 1}"
            premise = str(_field(row, "premise", path, where)).strip()
            connector = cause if _field(row, "question", path, where) == "cause" else effect
            choices = [_lower_first(str(_field(row, key, path, where))) for key in ("choice1", "choice2")]
            continuations = [f" {choice}" for choice in choices]
            items[lang].append(Item(f"xcopa-{lang}-{index}", lang, shared(f"{premise[:-1]} {connector}", continuations),
                                    tuple(continuations), int(_field(row, "label", path, where)), tuple(choices)))
    return items


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _xstorycloze(root: Path | None, langs: list[str]) -> dict[str, list[Item]]:
    if not langs:
        raise ConfigError("xstorycloze needs --langs (e.g. ru,zh,es,ar,hi,id,te,sw,eu,my).")
    items: dict[str, list[Item]] = {}
    for lang in langs:
        path = _find(root, "xstorycloze", [f"*{lang}*eval*.tsv", f"*.{lang}.*tsv", f"{lang}.tsv"])
        rows = _tsv(path) if path else _hub_rows("xstorycloze", lang, "eval")
        items[lang] = []
        for index, row in enumerate(rows):
            where = f"row {index}"
            context = " ".join(str(_field(row, f"InputSentence{k}", path, where)) for k in range(1, 5))
            endings = [str(_field(row, f"RandomFifthSentenceQuiz{k}", path, where)) for k in (1, 2)]
            label = int(_field(row, "AnswerRightEnding", path, where)) - 1
            continuations = [f" {ending}" for ending in endings]
            items[lang].append(Item(f"xstorycloze-{lang}-{index}", lang, shared(context, continuations),
                                    tuple(continuations), label, tuple(endings)))
    return items


def _tsv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _xwinograd(root: Path | None, langs: list[str]) -> dict[str, list[Item]]:
    """Partial scoring: each option fills the blank, and the shared rest of the sentence is what is scored."""
    langs = langs or ["en", "fr", "ja", "pt", "ru", "zh"]
    items: dict[str, list[Item]] = {}
    for lang in langs:
        name = XWINOGRAD_NAMES.get(lang, lang)
        path = _find(root, "xwinograd", [f"{name}.jsonl", f"{name}.parquet", f"{name}/*.parquet"])
        if path is None:
            rows = _hub_rows("xwinograd", name, "test")
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            rows = _jsonl(path)
        items[lang] = []
        for index, row in enumerate(rows):
            where = f"row {index}"
            sentence = str(_field(row, "sentence", path, where))
            if "_" not in sentence:
                raise DataError(f"{path}: {where}: field 'sentence' has no '_' blank.")
            blank = sentence.index("_")
            options = [str(_field(row, key, path, where)) for key in ("option1", "option2")]
            rest = " " + sentence[blank + 1:].strip()
            contexts = [sentence[:blank] + option for option in options]
            label = int(_field(row, "answer", path, where)) - 1
            items[lang].append(Item(f"xwinograd-{lang}-{index}", lang, tuple(contexts), (rest, rest), label,
                                    (rest, rest)))
    return items


def sib200_rows(root: Path | None, lang: str) -> tuple[Path | None, list[dict]]:
    """The SIB-200 dev rows (`index_id`, `category`, `text`) of a language, from `root` or else the hub, and the
    file they came from (None from the hub). Its texts are FLORES-200 sentences."""
    flores = languages.get(lang).flores
    path = _find(root, "sib-200", [f"{flores}/dev.tsv"]) or _find(root, "sib200", [f"{flores}/dev.tsv"])
    return path, _tsv(path) if path else _hub_rows("sib200", flores, "validation")


def _sib200(root: Path | None, langs: list[str]) -> dict[str, list[Item]]:
    langs = langs or list(languages.CODES)
    items: dict[str, list[Item]] = {}
    for lang in langs:
        path, rows = sib200_rows(root, lang)
        labels_file = path.parent / "labels.txt" if path else None
        labels = (labels_file.read_text(encoding="utf-8").split() if labels_file and labels_file.is_file()
                  else sorted({str(row["category"]) for row in rows}))
        items[lang] = []
        for index, row in enumerate(rows):
            where = f"row {index}"
            category = str(_field(row, "category", path, where))
            if category not in labels:
                raise DataError(f"{path}: {where}: field 'category' {category!r} is not one of {labels}.")
            text = str(_field(row, "text", path, where)).strip()
            continuations = [f" {label}" for label in labels]
            items[lang].append(Item(f"sib200-{lang}-{row.get('index_id', index)}", lang,
                                    shared(f"{text}\nTopic:", continuations), tuple(continuations),
                                    labels.index(category), tuple(labels)))
    return items


BELEBELE_LETTERS = ("A", "B", "C", "D")


def _belebele(root: Path | None, langs: list[str]) -> dict[str, list[Item]]:
    """Belebele's published JSONL (<FLORES code>.jsonl: flores_passage, question, mc_answer1-4,
    correct_answer_num), with lm-evaluation-harness's prompt: the passage, the question, the four lettered answers,
    and the letter scored."""
    langs = langs or list(languages.CODES)
    items: dict[str, list[Item]] = {}
    for lang in langs:
        flores = languages.get(lang).flores
        path = _find(root, "belebele", [f"{flores}.jsonl"])
        rows = _jsonl(path) if path else _hub_rows("belebele", flores, "test")
        items[lang] = []
        for index, row in enumerate(rows):
            where = f"line {index + 1}"
            answers = [str(_field(row, f"mc_answer{k}", path, where)) for k in range(1, 5)]
            lettered = "\n".join(f"{letter}: {answer}" for letter, answer in zip(BELEBELE_LETTERS, answers))
            passage, question = (str(_field(row, key, path, where)) for key in ("flores_passage", "question"))
            context = f"P: {passage}\nQ: {question.strip()}\n{lettered}\nAnswer:"
            label = str(_field(row, "correct_answer_num", path, where))
            if label not in ("1", "2", "3", "4"):
                raise DataError(f"{path}: {where}: field 'correct_answer_num' must be 1, 2, 3 or 4, not {label!r}.")
            continuations = tuple(f" {letter}" for letter in BELEBELE_LETTERS)
            items[lang].append(Item(f"belebele-{lang}-{index}", lang, shared(context, list(continuations)),
                                    continuations, int(label) - 1, BELEBELE_LETTERS))
    return items


def _generic(path: Path) -> dict[str, list[Item]]:
    """Rows with `context`, `choices` (a list of continuations), `label` (index), optional `lang` and `id`."""
    if path.suffix == ".jsonl":
        rows = _jsonl(path)
    else:
        import yaml

        rows = yaml.safe_load(path.read_text(encoding="utf-8"))
        rows = rows.get("items", rows) if isinstance(rows, dict) else rows
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a list of items with context, choices and label.")
    items: dict[str, list[Item]] = {}
    for index, row in enumerate(rows):
        where = f"item {index}"
        choices = _field(row, "choices", path, where)
        label = _field(row, "label", path, where)
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{path}: {where}: field 'choices' must be a list of at least two strings.")
        if not isinstance(label, int) or not 0 <= label < len(choices):
            raise DataError(f"{path}: {where}: field 'label' must be an index into choices.")
        lang = str(row.get("lang") or "und")
        context = str(_field(row, "context", path, where))
        items.setdefault(lang, []).append(Item(str(row.get("id", f"{path.stem}-{index}")), lang,
                                               shared(context, choices), tuple(choices), label, tuple(choices)))
    return items
