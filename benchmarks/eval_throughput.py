"""XCOPA throughput: `bactrian eval` against lm-evaluation-harness on the same model (the embedded default,
Gemma 3 270M) and the same local files (../shared/data/eval/xcopa), each in its own process. Reports items per
second and the accuracy of each; they must be identical.

    python benchmarks/eval_throughput.py [--langs et,id,it,sw]

Prints a table and writes bench-out/eval_throughput.json."""

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
XCOPA = REPO.parent / "shared" / "data" / "eval" / "xcopa"


def run_bactrian(langs: list[str]) -> dict:
    from bactrian.eval.config import EvalConfig
    from bactrian.eval.run import evaluate

    config = EvalConfig(base_model="default", tasks=["xcopa"], data_dir=str(XCOPA.parent), lang=langs,
                        output_dir=str(OUT / "eval-report"))
    from bactrian.models import resolve

    resolve("default")
    started = time.perf_counter()
    results = evaluate(config)["tasks"]["xcopa"]["base"]
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "items": sum(r["n"] for r in results.values()),
            "accuracy": {lang: r["acc"] for lang, r in results.items()}}


def run_lm_eval(langs: list[str]) -> dict:
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from bactrian.eval.lm_eval_tasks import write_local_xcopa_tasks
    from bactrian.models import resolve

    folder = Path(tempfile.mkdtemp())
    names = write_local_xcopa_tasks(folder, XCOPA, langs)
    path = resolve("default").path
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the reference runs where ours does
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={path},dtype=float32",
                                      tasks=names, device=device, batch_size=8,
                                      task_manager=TaskManager(include_path=str(folder)))["results"]
    elapsed = time.perf_counter() - started
    accuracy = {lang: results[f"local_xcopa_{lang}"]["acc,none"] for lang in langs}
    return {"seconds": elapsed, "items": 100 * len(langs), "accuracy": accuracy}


def main(langs: list[str]) -> None:
    if not XCOPA.is_dir():
        sys.exit(f"{XCOPA} is absent: this benchmark needs ../shared/data beside the checkout.")
    OUT.mkdir(exist_ok=True)
    rows = {}
    for way in ("bactrian", "lm-eval"):
        process = subprocess.run([sys.executable, __file__, "--child", way, "--langs", ",".join(langs)],
                                 capture_output=True, text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
        line = next((out for out in process.stdout.splitlines() if out.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{way} failed:\n{process.stderr[-3000:]}")
        rows[way] = json.loads(line[7:])
    for row in rows.values():
        row["items_per_second"] = row["items"] / row["seconds"]
    print(f"\n{'way':<10} {'items':>6} {'seconds':>8} {'items/s':>8} {'speed-up':>9}  accuracy per language")
    for way, row in rows.items():
        speedup = row["items_per_second"] / rows["lm-eval"]["items_per_second"]
        accuracy = ", ".join(f"{lang} {100 * acc:.0f}" for lang, acc in row["accuracy"].items())
        print(f"{way:<10} {row['items']:>6} {row['seconds']:>8.1f} {row['items_per_second']:>8.2f} {speedup:>8.2f}x  "
              f"{accuracy}")
    same = all(abs(rows["bactrian"]["accuracy"][lang] - rows["lm-eval"]["accuracy"][lang]) < 1e-9 for lang in langs)
    print(f"\naccuracy identical: {same}")
    save("eval_throughput", {"rows": rows, "identical": same})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--langs", default="et,id,it,sw")
    parser.add_argument("--child", choices=("bactrian", "lm-eval"))
    arguments = parser.parse_args()
    chosen = arguments.langs.split(",")
    if arguments.child:
        result = run_bactrian(chosen) if arguments.child == "bactrian" else run_lm_eval(chosen)
        print("RESULT " + json.dumps(result))
    else:
        main(chosen)
