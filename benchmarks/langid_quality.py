"""Language ID on real sentences, per language: `written_in` precision and recall on whole sentences and on their
first 40 characters, `detect_language` accuracy, and texts per second on one core.

Two corpora from ../shared/data: NTREX-128 (news, 100 lines for 51 of the 52 languages; the rule was tuned on it)
and FLORES-200 (SIB-200's dev sentences, 99 for all 52 languages; held out). For each language, its own lines are
the positives and as many lines drawn from the other languages the negatives.

    python benchmarks/langid_quality.py

Prints the table (markdown, for benchmarks/RESULTS.md) and writes bench-out/langid_quality.json."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from bench_out import OUT, save

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
NTREX = SHARED / "translation" / "ntrex-128"
SIB = SHARED / "eval" / "sib-200"
BAR = {"recall": 0.97, "precision": 0.99, "detect": 0.97}


def ntrex_lines() -> dict[str, list[str]]:
    from bactrian import languages

    by_flores3 = {lang.flores.split("_")[0]: lang.code for lang in languages.LANGUAGES}
    aliases = {"aze-Latn": "az", "fas": "fa", "zho-CN": "zh", "mon": "mn", "nep": "ne", "pus": "ps", "msa": None,
               "swa": "sw", "lav": "lv", "est": "et", "tgl": "tl", "fil": "tl"}
    lines = {}
    for path in sorted(NTREX.glob("newstest2019-ref.*.txt")):
        name = path.name.removeprefix("newstest2019-ref.").removesuffix(".txt")
        code = aliases.get(name, by_flores3.get(name))
        if code and code not in lines:
            lines[code] = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines


def flores_lines() -> dict[str, list[str]]:
    from bactrian import languages
    from bactrian.eval.tasks.sib200 import sib200_rows

    return {lang: [row["text"] for row in sib200_rows(SIB.parent, lang)[1]] for lang in languages.CODES}


def score(lines: dict[str, list[str]]) -> dict[str, dict]:
    from bactrian.langid import detect_language, written_in

    rng = random.Random(0)
    rows = {}
    for code, own in sorted(lines.items()):
        wrong = rng.sample([line for other, texts in lines.items() if other != code for line in texts], len(own))
        row = {"lines": len(own)}
        for label, cut in (("", None), ("short_", 40)):
            positives = [line[:cut] for line in own]
            negatives = [line[:cut] for line in wrong]
            hits = sum(written_in(line, code) for line in positives)
            false_hits = sum(written_in(line, code) for line in negatives)
            row[f"{label}recall"] = hits / len(own)
            row[f"{label}precision"] = hits / max(1, hits + false_hits)
        row["detect"] = sum(detect_language(line) == code for line in own) / len(own)
        rows[code] = row
    return rows


def speed(lines: dict[str, list[str]]) -> float:
    """written_in calls per second on whole sentences, one core, after a warm-up (models loaded)."""
    from bactrian.langid import written_in

    pairs = [(line, code) for code, texts in lines.items() for line in texts]
    for line, code in pairs[:: 50]:
        written_in(line, code)
    started = time.perf_counter()
    for line, code in pairs:
        written_in(line, code)
    return len(pairs) / (time.perf_counter() - started)


def meets(row: dict) -> bool:
    return (min(row["recall"], row["short_recall"]) >= BAR["recall"]
            and min(row["precision"], row["short_precision"]) >= BAR["precision"] and row["detect"] >= BAR["detect"])


def print_table(results: dict) -> None:
    names = list(results["corpora"])
    header = " | ".join(f"{name} P | R | R40 | P40 | detect" for name in names)
    print(f"| lang | {header} |")
    print("| --- |" + " ---: |" * 5 * len(names))
    codes = sorted({code for corpus in results["corpora"].values() for code in corpus})
    for code in codes:
        cells = []
        for name in names:
            row = results["corpora"][name].get(code)
            cells.append(" | ".join(["-"] * 5) if row is None else " | ".join(
                f"{'**' if value < bar else ''}{math.floor(value * 1000) / 1000:.3f}{'**' if value < bar else ''}"
                for value, bar in (
                    (row["precision"], BAR["precision"]), (row["recall"], BAR["recall"]),
                    (row["short_recall"], BAR["recall"]), (row["short_precision"], BAR["precision"]),
                    (row["detect"], BAR["detect"]))))
        print(f"| {code} | " + " | ".join(cells) + " |")
    for name in names:
        failing = [code for code, row in results["corpora"][name].items() if not meets(row)]
        print(f"\n{name}: {len(results['corpora'][name]) - len(failing)} of {len(results['corpora'][name])} "
              f"languages meet the bar; below it: {', '.join(failing) or 'none'}")
    print(f"written_in on whole sentences, one core: {results['texts_per_second']:,.0f} texts/s")


def main() -> None:
    corpora = {"NTREX-128": ntrex_lines(), "FLORES-200": flores_lines()}
    results = {"corpora": {name: score(lines) for name, lines in corpora.items()},
               "texts_per_second": speed(corpora["FLORES-200"])}
    print_table(results)
    OUT.mkdir(exist_ok=True)
    save("langid_quality", results)


if __name__ == "__main__":
    main()
