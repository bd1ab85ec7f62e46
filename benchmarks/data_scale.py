"""Data at the original's scale: time to the first training step, tokenization speed, peak memory and cache size
for 52 languages x N rows, on the embedded default model (Gemma 3 270M, 262k vocabulary).

The rows are made from the shared data: each language's file cycles through the multialpaca instructions
(es/ja/pt) with an output of one or two NTREX-128 sentences in that language (English where NTREX has none),
so scripts and token counts are the language's own, and rows average about the size of Bactrian-X's (130 MB of
JSONL for 337,896 rows, 385 bytes a row). Each scale runs as the user would:

    bactrian finetune --base_model default --data_path DIR --lang all --max_steps 1 --batch_size 8
        --micro_batch_size 8 --cutoff_len 512 --packing --val_set_size 8 --cache_dir FRESH

first with an empty cache, then again (mapping the cache). "model only" is the same command on 52 x 10 rows:
its RSS when training starts (model loaded, data ready) is the model's own footprint, which the bound is stated
against (data may add 1.5 GB at 3.4M rows); "data MB" is a run's RSS at that point minus the model's. Peak RSS
(which includes the first step's activations, the same at every scale) is reported too.
The last row runs the first command's second run under `torchrun --nproc_per_node 2` (peak RSS per process).

    python benchmarks/data_scale.py                      # 0.1M, 0.34M and 3.4M rows
    python benchmarks/data_scale.py --rows_per_lang 2000 # one quick scale

Prints a table and writes bench-out/data_scale.json."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_out import OUT, save
from langid_quality import NTREX, ntrex_lines

REPO = Path(__file__).resolve().parents[1]
MULTIALPACA = REPO.parent / "shared" / "data" / "instructions" / "multialpaca"
SCALES = (1923, 6498, 65385)  # rows per language: 0.1M, 0.34M and 3.4M rows over 52 languages
FIRST_STEP = re.compile(r'"step": 1, "train_loss"')


def write_data(folder: Path, rows_per_lang: int) -> None:
    """52 files of rows_per_lang rows (written once per scale, then reused)."""
    from bactrian import languages

    if (folder / "done").is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    instructions = [json.loads(line) for path in sorted(MULTIALPACA.glob("*.jsonl"))
                    for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = ntrex_lines()
    english = (NTREX / "newstest2019-src.eng.txt").read_text(encoding="utf-8").splitlines()
    rng = random.Random(0)
    for lang in languages.CODES:
        own = sentences.get(lang, english)
        with open(folder / f"{lang}.jsonl", "w", encoding="utf-8") as handle:
            for number, row in zip(range(rows_per_lang), itertools.cycle(instructions)):
                output = " ".join(rng.sample(own, rng.randint(1, 2)))
                handle.write(json.dumps({"id": f"{lang}-{number}", "instruction": row["instruction"],
                                         "input": row.get("input") or "", "output": output},
                                        ensure_ascii=False) + "\n")
    (folder / "done").write_text("")


def measure(command: list[str], env: dict[str, str]) -> dict:
    """Run `command`, timing the first training step's log line; peak RSS is the largest of its processes."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    first_step, tokenize_s, before_training, lines = None, None, None, []
    for line in process.stdout:
        lines.append(line)
        if first_step is None and FIRST_STEP.search(line):
            first_step = time.perf_counter() - started
        if match := re.search(r"Tokenized in ([\d.]+) s", line):
            tokenize_s = float(match.group(1))
        if match := re.search(r"peak RSS before training (\d+) MB", line):
            before_training = max(before_training or 0, int(match.group(1)))
    process.wait()
    if process.returncode:
        sys.exit("".join(lines[-40:]))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"first_step_s": round(first_step, 1), "tokenize_s": tokenize_s, "rss_before_training_mb": before_training,
            "peak_rss_mb": round(peak)}


def in_child(command: list[str], env: dict[str, str]) -> dict:
    """measure() in a fresh process, so that RUSAGE_CHILDREN is this command's alone."""
    result = subprocess.run([sys.executable, __file__, "--measure", json.dumps(command)], env=env,
                            capture_output=True, text=True)
    line = next((out for out in result.stdout.splitlines() if out.startswith("RESULT ")), None)
    if line is None:
        sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
    return json.loads(line[7:])


def finetune_command(data: Path, cache: Path, out: Path, processes: int = 1) -> list[str]:
    launch = [sys.executable, "-m", "bactrian"] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "-m", "bactrian"]
    return [*launch, "finetune", "--base_model", "default", "--data_path", str(data), "--lang", "all",
            "--max_steps", "1", "--batch_size", "8", "--micro_batch_size", str(8 // processes), "--cutoff_len", "512",
            "--packing", "--val_set_size", "8", "--eval_steps", "0", "--save_steps", "0", "--logging_steps", "1",
            "--cache_dir", str(cache), "--output_dir", str(out)]


def folder_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def run_scale(rows_per_lang: int, env: dict[str, str], torchrun: bool) -> list[dict]:
    work = OUT / "data-scale"
    data, cache = work / f"data-{rows_per_lang}", work / f"cache-{rows_per_lang}"
    write_data(data, rows_per_lang)
    shutil.rmtree(cache, ignore_errors=True)
    rows = []
    for run in ("first run", "from cache"):
        print(f"{52 * rows_per_lang:,} rows, {run} ...", flush=True)
        result = in_child(finetune_command(data, cache, work / "out"), env)
        rows.append({"rows": 52 * rows_per_lang, "run": run, **result})
    meta = [json.loads(path.read_text()) for path in cache.glob("*/meta.json")]
    tokens = sum(entry["tokens"] for entry in meta)
    rows[0].update(tokens=tokens, target_tokens=sum(entry["target_tokens"] for entry in meta),
                   tokens_per_s=round(tokens / rows[0]["tokenize_s"]), cache_mb=round(folder_mb(cache)),
                   jsonl_mb=round(folder_mb(data)))
    if torchrun:
        print(f"{52 * rows_per_lang:,} rows, torchrun x2 from cache ...", flush=True)
        result = in_child(finetune_command(data, cache, work / "out2", processes=2), env)
        rows.append({"rows": 52 * rows_per_lang, "run": "torchrun x2, from cache", **result})
    return rows


def print_table(model_only: dict, rows: list[dict]) -> None:
    print(f"\nmodel only (52 x 10 rows): RSS at training start {model_only['rss_before_training_mb']} MB, peak "
          f"{model_only['peak_rss_mb']} MB, first step {model_only['first_step_s']} s")
    print(f"{'rows':>10} {'run':<24} {'first step s':>12} {'tokenize s':>10} {'tokens/s':>9} {'tokens':>12} "
          f"{'JSONL MB':>9} {'cache MB':>9} {'RSS start MB':>12} {'data MB':>8} {'peak RSS MB':>11}")
    for row in rows:
        data_mb = row["rss_before_training_mb"] - model_only["rss_before_training_mb"]
        print(f"{row['rows']:>10,} {row['run']:<24} {row['first_step_s']:>12} {row.get('tokenize_s') or '-':>10} "
              f"{row.get('tokens_per_s', '-'):>9} {row.get('tokens', '-'):>12} {row.get('jsonl_mb', '-'):>9} "
              f"{row.get('cache_mb', '-'):>9} {row['rss_before_training_mb']:>12} {data_mb:>8} "
              f"{row['peak_rss_mb']:>11}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows_per_lang", type=int, nargs="*", default=list(SCALES))
    parser.add_argument("--torchrun_at", type=int, default=SCALES[1], help="rows per language of the torchrun row")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)))}
    if arguments.measure:
        print("RESULT " + json.dumps(measure(json.loads(arguments.measure), env)))
        return
    if not MULTIALPACA.is_dir():
        sys.exit(f"{MULTIALPACA} is absent: this benchmark needs ../shared/data beside the checkout.")
    work = OUT / "data-scale"
    write_data(work / "data-10", 10)
    shutil.rmtree(work / "cache-10", ignore_errors=True)
    model_only = in_child(finetune_command(work / "data-10", work / "cache-10", work / "out"), env)
    rows = [row for scale in arguments.rows_per_lang
            for row in run_scale(scale, env, torchrun=scale == arguments.torchrun_at)]
    print_table(model_only, rows)
    save("data_scale", {"model_only": model_only, "rows": rows})


if __name__ == "__main__":
    main()
