"""Language-ID filtering on real text: each language's NTREX-128 lines (right) mixed with as many lines of other
languages (wrong); precision and recall of `written_in` per language.

    python benchmarks/langid_quality.py

Prints a table and writes bench-out/langid_quality.json."""

from __future__ import annotations

import random
from pathlib import Path

from bench_out import OUT, save

REPO = Path(__file__).resolve().parents[1]
NTREX = REPO.parent / "shared" / "data" / "translation" / "ntrex-128"


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


def main() -> None:
    from bactrian.langid import written_in

    lines = ntrex_lines()
    rng = random.Random(0)
    rows = {}
    for code, own in sorted(lines.items()):
        others = [line for other, texts in lines.items() if other != code for line in texts]
        wrong = rng.sample(others, len(own))
        true_positive = sum(written_in(line, code) for line in own)
        false_positive = sum(written_in(line, code) for line in wrong)
        rows[code] = {"lines": len(own), "recall": true_positive / len(own),
                      "precision": true_positive / max(1, true_positive + false_positive)}
    print(f"{'lang':<5} {'lines':>5} {'precision':>10} {'recall':>7}")
    for code, row in rows.items():
        print(f"{code:<5} {row['lines']:>5} {row['precision']:>10.3f} {row['recall']:>7.3f}")
    print(f"mean  {'':>5} {sum(r['precision'] for r in rows.values()) / len(rows):>10.3f} "
          f"{sum(r['recall'] for r in rows.values()) / len(rows):>7.3f}  ({len(rows)} languages)")
    OUT.mkdir(exist_ok=True)
    save("langid_quality", rows)


if __name__ == "__main__":
    main()
