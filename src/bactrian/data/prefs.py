"""`bactrian data prefs`: preference pairs per language from instruction data and a model, for `finetune
--method dpo|orpo`. The chosen answer is the dataset's (the teacher's); the rejected one is the model's own,
when it shows what preference tuning should train away: an answer in another language, one that echoes the
prompt, or one cut off at its token budget; or, with a judge endpoint, when the judge scores it below the
teacher's in both orders. The model answers through the engine in batches and its answers are kept, so a rerun
resumes. The pairs the language guard made while serving (`serve --guard_pairs_file`: the corrected answer
chosen, its drifting first attempt rejected) join them with `--guard_pairs`, with or without data. The output
folder is a dataset `finetune --data_path` and `datasets.load_dataset` read as it is:
`<lang>.parquet` (id, lang, instruction, input, chosen, rejected, kind) and `report.md`; the answers, the judge's
request cache and `report.json` are under `work/`."""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from .. import languages
from ..endpoints.cache import RequestCache
from ..endpoints.client import ChatClient, chat_client
from ..errors import ConfigError, DataError
from ..eval.metrics import language_confusion
from ..eval.pairwise import agreed_winner, both_orders
from ..fileio import atomic_write_bytes, atomic_write_json, holds_output
from ..infer.answers import answer_prompts, read_answers
from ..infer.engine import build_engine
from ..infer.requests import SamplingParams
from ..infer.routing import BASE
from ..records import Instruction, load_records, read_preferences, write_parquet
from .config import PrefsConfig

log = logging.getLogger(__name__)

KINDS = ("language_confusion", "echo", "cut_off", "empty", "judge", "language_guard")
PAIR_COLUMNS = ("id", "lang", "instruction", "input", "chosen", "rejected", "kind")
ECHO_CHARS = 40  # an answer that repeats this much of the prompt's start (or is part of the prompt) echoes it


@holds_output("output_dir", "data prefs")
def prefs(config: PrefsConfig) -> dict[str, Any]:
    if not config.data_path and not config.guard_pairs:
        raise ConfigError("--data_path is required (the instruction data with the teacher's answers), unless "
                          "--guard_pairs gives the pairs.")
    out = Path(config.output_dir)
    work = out / "work"
    rows, pairs, verdicts = _model_pairs(config, work) if config.data_path else ([], [], {})
    guarded = guard_pairs(config.guard_pairs, languages.parse_langs(config.lang), pairs)
    pairs += guarded["pairs"]
    counts = write_parquet(pairs, out, PAIR_COLUMNS) if pairs else {}
    report = _report(rows, pairs, verdicts, guarded if config.guard_pairs else None)
    atomic_write_json(work / "report.json", report)
    atomic_write_bytes(out / "report.md", markdown(report).encode("utf-8"))
    if not counts:
        log.warning("No pairs: %s.", _why_no_pairs(config))
    return report


def _why_no_pairs(config: PrefsConfig) -> str:
    if not config.data_path:
        return "the guard pair files hold none in these languages"
    return "every answer of the model passed the rules" + (
        "" if config.judge_base_url else " (a judge, --judge_base_url, compares the rest)")


def _model_pairs(config: PrefsConfig, work: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                           dict[str, str]]:
    """The rows of the data, the pairs the model's answers to them make, and the judge's verdicts (if any)."""
    rows = _rows(config)
    answers = _model_answers(config, rows, work)
    kinds = {row["key"]: rejection(row, answers[row["key"]]) for row in rows}
    pairs = [_pair(row, row["output"], answers[row["key"]]["output"], kinds[row["key"]]) for row in rows
             if kinds[row["key"]]]
    verdicts: dict[str, str] = {}
    if config.judge_base_url:
        unjudged = [row for row in rows if not kinds[row["key"]]]
        verdicts = _judge(config, unjudged, answers, work)
        for row in unjudged:  # the lower-scored answer in both orders is the rejected one
            teacher, model = row["output"], answers[row["key"]]["output"]
            if verdicts[row["key"]] != "tie":
                pairs.append(_pair(row, *((teacher, model) if verdicts[row["key"]] == "teacher" else (model, teacher)),
                                   "judge"))
    return rows, pairs, verdicts


def _rows(config: PrefsConfig) -> list[dict[str, Any]]:
    """The rows to answer, each with a `key` (lang/id: Bactrian-X shares ids across languages)."""
    records = load_records(config.data_path, languages.parse_langs(config.lang) or None)
    taken: Counter = Counter()
    rows = []
    for record in records:
        taken[record.lang] += 1
        if not config.rows_per_lang or taken[record.lang] <= config.rows_per_lang:
            rows.append({**record.to_dict(), "key": f"{record.lang}/{record.id}"})
    keys = Counter(row["key"] for row in rows)
    repeated = next((key for key, count in keys.items() if count > 1), None)
    if repeated:
        raise DataError(f"{config.data_path}: row id {repeated!r} appears {keys[repeated]} times in one language; "
                        "pairs are kept by language and id, so ids must be unique within a language.")
    return rows


def _model_answers(config: PrefsConfig, rows: list[dict[str, Any]], out: Path) -> dict[str, dict[str, Any]]:
    """The model's answer to every row, through the engine (resumed from answers.jsonl)."""
    engine = build_engine(config)
    model = config.adapter or (next(iter(engine.catalog.adapters)) if len(engine.catalog.adapters) == 1 else BASE)
    engine.catalog.check_loaded(model, "--adapter")
    prompts = [Instruction(row["key"], row["lang"], row["instruction"], row["input"]) for row in rows]
    greedy = SamplingParams(max_new_tokens=config.max_new_tokens)
    answer_prompts(engine, prompts, [model], greedy, out / "answers.jsonl", config.decode_batch_size)
    return {key: row for (key, name), row in read_answers(out / "answers.jsonl").items() if name == model}


def _simple(text: str) -> str:
    """Lower case, letters and digits only, single spaces: what an echo is compared on."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def echoes(answer: str, instruction: str, text_input: str = "") -> bool:
    """The answer repeats the prompt: it holds the prompt's first ECHO_CHARS characters (or the whole of a
    shorter prompt), or it is itself a piece of the prompt."""
    said, prompt = _simple(answer), _simple(f"{instruction} {text_input}")
    return bool(said) and (prompt[:ECHO_CHARS] in said or said in prompt)


def rejection(row: dict[str, Any], answer: dict[str, Any]) -> str | None:
    """Why the model's answer makes a rejected example (the first that applies), or None; never when it says
    what the teacher says (a classification's one-word answer also appears in its prompt)."""
    text = answer["output"]
    if not text.strip():
        return "empty"
    if _simple(text) == _simple(row["output"]):
        return None
    if language_confusion(text, row["lang"])["line_pass"] is False:  # a line in another language (eval's rule;
        return "language_confusion"  # data filter's wrong_language judges the whole answer instead)
    if echoes(text, row["instruction"], row["input"]):
        return "echo"
    if answer["finish_reason"] == "length":
        return "cut_off"
    return None


def guard_pairs(paths: list[str], langs: list[str], taken: list[dict[str, Any]]) -> dict[str, Any]:
    """The pairs of the guard's pair files (checked rows of `read_preferences`) in `langs` (all when empty), each
    (lang, instruction, input, chosen, rejected) once, as `language_guard` pairs. Their ids stay unique within a
    language, beside the pairs already `taken`: an id met again becomes `<id>-2` (`-3`, ... if that is taken too).
    Also how many rows were read, left out as duplicates, and renamed. The files are read a row at a time: only
    the pairs kept are held."""
    read = other_languages = 0
    first: dict[tuple[str, ...], dict[str, Any]] = {}
    for record in (record for path in paths for record in read_preferences(path)):
        read += 1
        if langs and record.lang not in langs:
            other_languages += 1
            continue
        key = (record.lang, record.instruction, record.input, record.output, record.rejected)
        if key not in first:
            first[key] = _pair(record.to_dict(), record.output, record.rejected, "language_guard")
    pairs = list(first.values())
    return {"pairs": pairs, "read": read, "other_languages": other_languages,
            "duplicates": read - other_languages - len(pairs), "renamed_ids": _make_ids_unique(pairs, taken)}


def _make_ids_unique(pairs: list[dict[str, Any]], taken: list[dict[str, Any]]) -> int:
    """Give each of `pairs` an id no pair of its language has (among `taken` and the pairs before it), by a
    suffix -2, -3, ...; how many were renamed."""
    used = {(pair["lang"], pair["id"]) for pair in taken}
    renamed = 0
    for pair in pairs:
        base, number = pair["id"], 1
        while (pair["lang"], pair["id"]) in used:
            number += 1
            pair["id"] = f"{base}-{number}"
        renamed += number > 1
        used.add((pair["lang"], pair["id"]))
    return renamed


def _pair(row: dict[str, Any], chosen: str, rejected: str, kind: str) -> dict[str, Any]:
    return {"id": row["id"], "lang": row["lang"], "instruction": row["instruction"], "input": row["input"],
            "chosen": chosen, "rejected": rejected, "kind": kind}


def _judge(config: PrefsConfig, rows: list[dict[str, Any]], answers: dict[str, dict[str, Any]],
           out: Path) -> dict[str, str]:
    """Per row key: `teacher` when the judge scores the teacher's answer above the model's in both orders, `model`
    when the other way round, else `tie` (mixed, equal or unparsed verdicts). Requests are cached."""
    cache = RequestCache(out / "judge-cache.sqlite")
    try:
        return asyncio.run(_verdicts(config, rows, answers, chat_client(config.judge_base_url,
                                                                        config.judge_api_key, cache, config)))
    finally:
        cache.close()


async def _verdicts(config: PrefsConfig, rows: list[dict[str, Any]], answers: dict[str, dict[str, Any]],
                    client: ChatClient) -> dict[str, str]:
    async def verdict(row: dict[str, Any]) -> str:
        question = f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"]
        both = await both_orders(client, config, question, row["output"], answers[row["key"]]["output"], row["lang"])
        return {"a": "teacher", "b": "model", "tie": "tie"}[agreed_winner(both)]

    try:
        await client.check()
        results = await asyncio.gather(*(verdict(row) for row in rows))
    finally:
        await client.close()
    return {row["key"]: result for row, result in zip(rows, results)}


def _report(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], verdicts: dict[str, str],
            guarded: dict[str, Any] | None) -> dict[str, Any]:
    """Pairs of each kind per language; `guard_pairs` (None without --guard_pairs): what the guard's files held."""
    answered = Counter(row["lang"] for row in rows)
    kinds = {lang: Counter() for lang in sorted(set(answered) | {pair["lang"] for pair in pairs})}
    for pair in pairs:
        kinds[pair["lang"]][pair["kind"]] += 1
    per_lang = {lang: {"answered": answered[lang], "pairs": sum(counts.values()),
                       **{kind: counts[kind] for kind in KINDS}} for lang, counts in kinds.items()}
    return {"languages": per_lang, "pairs": len(pairs), "answered": len(rows),
            "judge": dict(Counter(verdicts.values())) if verdicts else None,
            "guard_pairs": {key: value for key, value in guarded.items() if key != "pairs"} if guarded else None}


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Preference pairs", "", "Rejected answers are the model's own: in another language, echoing the "
             "prompt, cut off, empty, or scored below the teacher's by the judge (both orders); language_guard: "
             "an answer as it drifted while served, the language guard's correction chosen.", "",
             "| language | answered | pairs | " + " | ".join(KINDS) + " |", "| --- |" + " ---: |" * (2 + len(KINDS))]
    for lang, counts in report["languages"].items():
        lines.append(f"| {lang} | {counts['answered']} | {counts['pairs']} | "
                     + " | ".join(str(counts[kind]) for kind in KINDS) + " |")
    lines.append(f"| **all** | {report['answered']} | {report['pairs']} | "
                 + " | ".join(str(sum(c[kind] for c in report["languages"].values())) for kind in KINDS) + " |")
    if report["guard_pairs"]:
        guarded = report["guard_pairs"]
        lines += ["", f"Guard pairs: {guarded['read']} read, {guarded['other_languages']} in other languages, "
                      f"{guarded['duplicates']} duplicates left out, {guarded['renamed_ids']} given a new id "
                      "(`<id>-2`, ...) because another pair of their language had theirs."]
    return "\n".join(lines) + "\n"
