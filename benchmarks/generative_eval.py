"""Generative evaluation on the embedded default (Gemma 3 270M) and the adapter `bactrian demo` trains.

    python benchmarks/generative_eval.py quality --adapter ./bactrian-demo/adapter
        language confusion on Vicuna-80 (12 languages, --questions per language), MGSM direct (the 11 languages
        of ../shared/data, 25 problems each) and NTREX-128 chrF++ both ways (the adapter's languages, --lines
        per direction): base and adapter side by side.
    python benchmarks/generative_eval.py mgsm-speed [--langs de,en,ja,ru] [--batch 16] [--lm_eval_batch N]
                                                    [--max_tokens 256]
        MGSM direct with `bactrian eval` (template raw: lm-eval's prompt) against lm-evaluation-harness's
        mgsm_direct on the same model and files, each in its own process: seconds and scores, which must agree.
        Ours runs twice: as it is, and with --prepacked_weights false (F.linear, as lm-eval's model runs).

    python benchmarks/generative_eval.py word-level
        the word-level confusion rule on NTREX-128: how many reference lines of each language it flags (false
        alarms), and how many it catches when the first six words of the English source line are appended.

Prints tables and writes bench-out/generative_eval_<part>.json."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_out import OUT, save

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
VICUNA_LANGS = ["ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "zh"]


def quality(adapter: str, questions: int, lines: int, batch: int) -> None:
    from bactrian.eval.config import EvalConfig
    from bactrian.eval.run import evaluate

    runs = {"confusion": dict(data_dir=str(DATA / "chat-eval"), limit=questions, max_new_tokens=128),
            "mgsm_direct": dict(data_dir=str(DATA / "eval" / "mgsm"), max_new_tokens=32),
            "ntrex": dict(data_dir=str(DATA / "translation"), limit=lines, max_new_tokens=96,
                          lang=[lang for lang in VICUNA_LANGS if lang != "en"])}
    summary = {}
    for task, options in runs.items():
        started = time.perf_counter()
        results = evaluate(EvalConfig(tasks=[task], lora_weights=[f"demo={adapter}"], decode_batch_size=batch,
                                      output_dir=str(OUT / "generative-eval" / task), **options))
        summary[task] = {"seconds": time.perf_counter() - started, "tasks": results["tasks"][task],
                         "metrics": results["metrics"][task]}
        print(f"\n## {task} ({summary[task]['seconds']:.0f} s)")
        for key, label, scale in results["metrics"][task]:
            _table(results["tasks"][task], key, label, scale)
    save("generative_eval_quality", summary)


def _table(by_model: dict, key: str, label: str, scale: float) -> None:
    models = list(by_model)
    groups = list(next(iter(by_model.values())))
    print(f"\n{label}\n| language | " + " | ".join(models) + " |\n| --- |" + " ---: |" * len(models))
    for group in groups:
        cells = []
        for model in models:
            summary = by_model[model][group]
            if summary.get(key) is None:
                cells.append("-")
                continue
            low, high = summary[f"{key}_ci95"]
            cells.append(f"{scale * summary[key]:.1f} [{scale * low:.1f}, {scale * high:.1f}]")
        print(f"| {group} | " + " | ".join(cells) + " |")
    for model in models:
        values = [s[key] for s in by_model[model].values() if s.get(key) is not None]
        print(f"average {model}: {scale * sum(values) / max(1, len(values)):.1f}")


def run_bactrian(langs: list[str], batch: int, max_tokens: int, packed: bool = True) -> dict:
    from bactrian.eval.config import EvalConfig
    from bactrian.eval.run import evaluate

    output = tempfile.mkdtemp()
    results = evaluate(EvalConfig(tasks=["mgsm_direct"], data_dir=str(DATA / "eval" / "mgsm"), lang=langs,
                                  prompt_template_name="raw", decode_batch_size=batch, max_new_tokens=max_tokens,
                                  output_dir=output, prepacked_weights=packed))
    per_lang = results["tasks"]["mgsm_direct"]["base"]
    return {"flexible": {lang: s["flexible_match"] for lang, s in per_lang.items()},
            "strict": {lang: s["strict_match"] for lang, s in per_lang.items()},
            "answers": {row["id"]: row["answer"] for row in results["examples"]["mgsm_direct"]["base"]}}


def run_lm_eval(langs: list[str], batch: int, max_tokens: int) -> dict:
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from bactrian.eval.lm_eval_tasks import write_local_mgsm_tasks
    from bactrian.models import resolve

    folder = Path(tempfile.mkdtemp())
    names = write_local_mgsm_tasks(folder, DATA / "eval" / "mgsm", langs)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the reference runs where ours does
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={resolve('default').path},dtype=float32,"
                                  "add_bos_token=True", tasks=names, device=device, batch_size=batch,
                                  gen_kwargs=f"max_gen_toks={max_tokens}", log_samples=True,
                                  task_manager=TaskManager(include_path=str(folder)))
    results = {lang: out["results"][f"local_mgsm_direct_{lang}"] for lang in langs}
    answers = {f"mgsm-{lang}-{sample['doc_id']}": sample["resps"][0][0] for lang in langs
               for sample in out["samples"][f"local_mgsm_direct_{lang}"] if sample["filter"] == "flexible-extract"}
    return {"flexible": {lang: float(r["exact_match,flexible-extract"]) for lang, r in results.items()},
            "strict": {lang: float(r["exact_match,remove_whitespace"]) for lang, r in results.items()},
            "answers": answers}


def mgsm_speed(langs: list[str], batch: int, lm_eval_batch: int, max_tokens: int) -> None:
    rows = {}
    for way, size in (("bactrian", batch), ("bactrian-unpacked", batch), ("lm-eval", lm_eval_batch)):
        started = time.perf_counter()
        process = subprocess.run([sys.executable, __file__, "child", "--way", way, "--langs", ",".join(langs),
                                  "--batch", str(size), "--max_tokens", str(max_tokens)],
                                 capture_output=True, text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
        line = next((out for out in process.stdout.splitlines() if out.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{way} failed:\n{process.stderr[-3000:]}")
        rows[way] = {**json.loads(line[7:]), "seconds": time.perf_counter() - started}
    ours, theirs = rows["bactrian"], rows["lm-eval"]
    same_answers = {way: sum(row["answers"][key].strip() == theirs["answers"].get(key, "").strip()
                             for key in row["answers"]) for way, row in rows.items() if way != "lm-eval"}
    print(f"\nMGSM direct, {len(langs)} languages x 25 problems, batch {batch} (lm-eval {lm_eval_batch}), at most "
          f"{max_tokens} new tokens\n")
    print("| way | seconds (whole process) | speed-up | flexible-extract EM % per language | strict EM % |")
    print("| --- | ---: | ---: | --- | --- |")
    for way, row in rows.items():
        flexible = ", ".join(f"{lang} {100 * v:.0f}" for lang, v in row["flexible"].items())
        strict = ", ".join(f"{lang} {100 * v:.0f}" for lang, v in row["strict"].items())
        print(f"| {way} | {row['seconds']:.1f} | {theirs['seconds'] / row['seconds']:.2f}x | {flexible} | {strict} |")
    same_scores = all(row["flexible"] == theirs["flexible"] and row["strict"] == theirs["strict"]
                      for way, row in rows.items() if way != "lm-eval")
    print(f"\nanswers identical to lm-eval's (of {len(ours['answers'])}): {same_answers}; identical scores: "
          f"{same_scores}")
    save("generative_eval_mgsm_speed", {"rows": rows, "identical_answers": same_answers, "same_scores": same_scores,
                                        "langs": langs, "batch": batch, "lm_eval_batch": lm_eval_batch,
                                        "max_tokens": max_tokens})


def word_level() -> None:
    from bactrian import languages
    from bactrian.eval.metrics import foreign_run
    from bactrian.eval.tasks.translation import ntrex_files

    source, references = ntrex_files(DATA / "translation")
    english = source.read_text(encoding="utf-8").splitlines()
    rows = {}
    for lang, path in sorted(references.items()):
        own = path.read_text(encoding="utf-8").splitlines()
        mixed = [f"{line} {' '.join(source_line.split()[:6])}" for line, source_line in zip(own, english)]
        rows[lang] = {"script": languages.get(lang).script, "lines": len(own),
                      "false_alarms": sum(foreign_run(line, lang) is not None for line in own) / len(own),
                      "caught": sum(foreign_run(line, lang) is not None for line in mixed) / len(mixed)}
    print("| language | script | lines | reference lines flagged % | English run caught % |")
    print("| --- | --- | ---: | ---: | ---: |")
    for lang, row in rows.items():
        print(f"| {lang} | {row['script']} | {row['lines']} | {100 * row['false_alarms']:.0f} | "
              f"{100 * row['caught']:.0f} |")
    for script in ("Latn", "other"):
        chosen = [row for row in rows.values() if (row["script"] == "Latn") == (script == "Latn")]
        print(f"{script}: flagged {100 * sum(r['false_alarms'] for r in chosen) / len(chosen):.1f}%, caught "
              f"{100 * sum(r['caught'] for r in chosen) / len(chosen):.1f}% (mean over {len(chosen)} languages)")
    save("generative_eval_word_level", rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("quality", "mgsm-speed", "word-level", "child"))
    parser.add_argument("--adapter", default="./bactrian-demo/adapter")
    parser.add_argument("--questions", type=int, default=16, help="Vicuna-80 questions per language")
    parser.add_argument("--lines", type=int, default=10, help="NTREX lines per direction")
    parser.add_argument("--langs", default="de,en,ja,ru")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lm_eval_batch", type=int, default=0, help="lm-eval's batch size (default: --batch)")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--way", choices=("bactrian", "bactrian-unpacked", "lm-eval"))
    arguments = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/data beside the checkout.")
    chosen = arguments.langs.split(",")
    if arguments.part == "quality":
        quality(arguments.adapter, arguments.questions, arguments.lines, arguments.batch)
    elif arguments.part == "word-level":
        word_level()
    elif arguments.part == "mgsm-speed":
        mgsm_speed(chosen, arguments.batch, arguments.lm_eval_batch or arguments.batch, arguments.max_tokens)
    else:
        if arguments.way == "lm-eval":
            result = run_lm_eval(chosen, arguments.batch, arguments.max_tokens)
        else:
            result = run_bactrian(chosen, arguments.batch, arguments.max_tokens, arguments.way == "bactrian")
        print("RESULT " + json.dumps(result, ensure_ascii=False))
