"""The language guard (`--language_guard`) on the embedded default (Gemma 3 270M) and the adapter `bactrian demo`
trains, in three phases:

1. quality: `bactrian eval --tasks confusion` with the guard off and on, base and demo, on two prompt sets: the
   shared Vicuna-80 questions in 12 languages (--questions each) and the shared MGSM problems in 11 languages
   asked as open questions (their answers are prose around numbers), --questions each. Line-level pass rate
   (LPR) per language, and what the guard did (retries per answer, pieces left unfixed).
2. cost: `bactrian serve --language_guard` with the demo adapter, driven by the openai client on
   /v1/chat/completions (greedy, 64 tokens), each request with the guard on or off by its `bactrian` field,
   interleaved, twice: tokens/s at 1 and 16 clients, time to first token.
3. loop: the guard's preference pairs (serve --guard_pairs_file) on Vicuna questions phase 1 does not ask
   (17-32 of each language), `data prefs --guard_pairs`, DPO from the demo adapter (--init_adapter), then both
   sets evaluated without the guard, before (phase 1's demo) and after, per language.

    python benchmarks/language_guard.py --demo_adapter bench-out/int8-quality/demo [--phases quality cost loop]

Prints tables and writes bench-out/language_guard.json (each phase's results kept there, so phases can run
apart)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_out import OUT, save
from serve_throughput import free_port, start, stop

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
VICUNA = SHARED / "chat-eval" / "vicuna-80"
MGSM = SHARED / "eval" / "mgsm"
WORK = OUT / "language-guard"
RESULTS = OUT / "language_guard.json"
MAX_TOKENS = 128


def mgsm_prompts(per_lang: int) -> Path:
    """The MGSM problems as open questions, in a file of instructions with lang (the confusion task reads it)."""
    path = WORK / "mgsm-prose.jsonl"
    rows = []
    for tsv in sorted(MGSM.glob("mgsm_*.tsv")):
        lang = tsv.stem.removeprefix("mgsm_")
        for number, line in enumerate(tsv.read_text(encoding="utf-8").splitlines()[:per_lang]):
            rows.append({"id": f"{lang}-{number}", "lang": lang, "instruction": line.split("\t")[0]})
    WORK.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def confusion(adapters: list[str], prompts: Path, questions: int, guard: bool, name: str) -> dict:
    """Each model's confusion summary per language (results.json's), answers kept under WORK/name."""
    from bactrian.eval.config import EvalConfig
    from bactrian.eval.run import evaluate

    config = EvalConfig(tasks=["confusion"], lora_weights=adapters, confusion_prompts=str(prompts), limit=questions,
                        max_new_tokens=MAX_TOKENS, decode_batch_size=16, language_guard=guard,
                        output_dir=str(WORK / name))
    return evaluate(config)["tasks"]["confusion"]


def quality(demo: str, questions: int) -> dict:
    sets = {"vicuna": VICUNA, "mgsm": mgsm_prompts(questions)}
    results = {}
    for set_name, prompts in sets.items():
        for guard in (False, True):
            started = time.perf_counter()
            key = f"{set_name}-{'guard' if guard else 'plain'}"
            results[key] = confusion([f"demo={demo}"], prompts, questions, guard, key)
            print(f"{key}: {time.perf_counter() - started:.0f} s", flush=True)
    return results


def lpr_table(results: dict, set_name: str) -> None:
    print(f"\n## {set_name}: line-level pass rate %, [95% interval]; guard: retries per answer / pieces unfixed\n")
    plain, guarded = results[f"{set_name}-plain"], results[f"{set_name}-guard"]
    models = list(plain)
    print("| language | " + " | ".join(f"{m} | {m} + guard | {m} guard work" for m in models) + " |")
    print("| --- |" + " ---: |" * (3 * len(models)))
    for lang in plain[models[0]]:
        cells = []
        for model in models:
            for summary in (plain[model][lang], guarded[model][lang]):
                cells.append(_rate(summary))
            work = guarded[model][lang].get("guard", {})
            cells.append(f"{work.get('retries_per_answer', 0):.2f} / {work.get('pieces_unfixed', 0)}")
        print(f"| {lang} | " + " | ".join(cells) + " |")


def _rate(summary: dict) -> str:
    value = summary.get("line_pass")
    if value is None:
        return "-"
    low, high = summary["line_pass_ci95"]
    return f"{100 * value:.1f} [{100 * low:.0f}, {100 * high:.0f}]"


# -- cost ---------------------------------------------------------------------------------------------------------
def questions_in_languages(count: int) -> list[str]:
    texts = [json.loads(line)["text"] for path in sorted(VICUNA.glob("questions_*.jsonl"))
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [texts[(i * 37) % len(texts)] for i in range(count)]


async def chat_request(client, question: str, guard: bool) -> dict:
    started = time.perf_counter()
    first, usage, retries = None, 0, 0
    stream = await client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": question}], max_tokens=64, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"bactrian": {"language_guard": guard}})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - started
        report = ((chunk.model_extra or {}).get("bactrian") or {}).get("guard")
        retries += (report or {}).get("retries", 0)
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    return {"ttft": first or 0.0, "tokens": usage, "retries": retries}


async def drive(url: str, clients: int, questions: list[str], guard: bool) -> dict:
    import openai

    queue = list(questions)

    async def worker(client) -> list[dict]:
        done = []
        while queue:
            done.append(await chat_request(client, queue.pop(), guard))
        return done

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=900) as client:
        started = time.perf_counter()
        rows = [row for batch in await asyncio.gather(*(worker(client) for _ in range(clients))) for row in batch]
        wall = time.perf_counter() - started
    return {"clients": clients, "guard": guard, "requests": len(rows),
            "tokens_per_second": sum(row["tokens"] for row in rows) / wall,
            "ttft_p50": statistics.median(row["ttft"] for row in rows),
            "retries_per_answer": sum(row["retries"] for row in rows) / len(rows)}


def serve(demo: str, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = start([sys.executable, "-m", "bactrian", "serve", "--lora_weights", f"demo={demo}", "--port", str(port),
                    *extra], f"http://127.0.0.1:{port}/health")
    return server, f"http://127.0.0.1:{port}"


def cost(demo: str) -> list[dict]:
    server, url = serve(demo)
    rows = []
    try:
        asyncio.run(drive(url, 1, questions_in_languages(1), False))  # warm-up (the guard's token scripts too)
        asyncio.run(drive(url, 1, questions_in_languages(1), True))
        for _ in range(2):
            for clients, count in ((1, 6), (16, 32)):
                for guard in (False, True):
                    rows.append(asyncio.run(drive(url, clients, questions_in_languages(count), guard)))
    finally:
        stop(server)
    print("\n## cost: demo adapter, chat completions, greedy, 64 tokens (two interleaved runs)\n")
    print("| clients | guard | tokens/s | time to first token p50 (s) | retries per answer |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['clients']} | {'on' if row['guard'] else 'off'} | {row['tokens_per_second']:.1f} | "
              f"{row['ttft_p50']:.2f} | {row['retries_per_answer']:.2f} |")
    return rows


# -- the loop -----------------------------------------------------------------------------------------------------
def collect_pairs(demo: str, skip: int) -> Path:
    """The guard's pairs on Vicuna questions skip+1 to 2*skip of each language (the quality phase asks the first
    `skip`), as served with --guard_pairs_file."""
    pairs = WORK / "guard-pairs.jsonl"
    pairs.unlink(missing_ok=True)
    server, url = serve(demo, "--language_guard", "--guard_pairs_file", str(pairs))
    try:
        texts = [json.loads(line)["text"] for path in sorted(VICUNA.glob("questions_*.jsonl"))
                 for line in path.read_text(encoding="utf-8").splitlines()[skip:2 * skip] if line.strip()]
        asyncio.run(drive(url, 16, texts, True))
    finally:
        stop(server)
    return pairs


def base_answers_kept(plain_run: str, name: str) -> None:
    """Seed run `name`'s answers with the base model's from `plain_run` (same prompts, same settings): the
    evaluation resumes them instead of decoding them again."""
    source = WORK / plain_run / "answers" / "confusion.jsonl"
    target = WORK / name / "answers" / "confusion.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(line + "\n" for line in source.read_text(encoding="utf-8").splitlines()
                              if json.loads(line)["model"] == "base"), encoding="utf-8")


def loop(demo: str, questions: int, steps: int, quality: dict) -> dict:
    from bactrian.data.config import PrefsConfig
    from bactrian.data.prefs import prefs
    from bactrian.train.config import FinetuneConfig
    from bactrian.train.finetune import finetune

    pairs = collect_pairs(demo, questions)
    folder = WORK / "guard-prefs"
    report = prefs(PrefsConfig(guard_pairs=[str(pairs)], output_dir=str(folder)))
    dpo = WORK / "dpo"
    finetune(FinetuneConfig(base_model="default", data_path=[str(folder)], output_dir=str(dpo), method="dpo",
                            init_adapter=demo, max_steps=steps, learning_rate=2e-4, warmup_steps=0, val_set_size=0,
                            lora_dropout=0.0, logging_steps=1, save_steps=0, eval_steps=0, global_batch_size=8,
                            micro_batch_size=2, cutoff_len=256, beta=0.1))
    after = {}
    for set_name, prompts in (("vicuna", VICUNA), ("mgsm", mgsm_prompts(questions))):
        base_answers_kept(f"{set_name}-plain", f"{set_name}-after-dpo")
        after[set_name] = confusion([f"demo={dpo}"], prompts, questions, False, f"{set_name}-after-dpo")
    lines = sum(1 for _ in pairs.open(encoding="utf-8")) if pairs.exists() else 0
    print(f"\n## loop: {lines} guard pairs from Vicuna questions {questions + 1}-{2 * questions}; {steps} DPO "
          "steps from the demo adapter; LPR % without the guard, before and after\n")
    for set_name in after:
        print(f"\n{set_name}:\n\n| language | demo | demo + DPO on the guard's pairs |\n| --- | ---: | ---: |")
        for lang, summary in quality[f"{set_name}-plain"]["demo"].items():
            print(f"| {lang} | {_rate(summary)} | {_rate(after[set_name]['demo'][lang])} |")
    return {"pairs_file": str(pairs), "pairs": lines, "prefs_report": report, "after": after}


def main(arguments: argparse.Namespace) -> None:
    if not VICUNA.is_dir() or not MGSM.is_dir():
        sys.exit(f"{SHARED} is absent: this benchmark needs ../shared/data beside the checkout.")
    demo = str(Path(arguments.demo_adapter).resolve())
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "quality" in arguments.phases:
        results["quality"] = quality(demo, arguments.questions)
        save("language_guard", results)
    if "quality" in results:
        for set_name in ("vicuna", "mgsm"):
            lpr_table(results["quality"], set_name)
    if "cost" in arguments.phases:
        results["cost"] = cost(demo)
        save("language_guard", results)
    if "loop" in arguments.phases:
        results["loop"] = loop(demo, arguments.questions, arguments.dpo_steps, results["quality"])
        save("language_guard", results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo_adapter", default="./bactrian-demo/adapter")
    parser.add_argument("--phases", nargs="+", default=["quality", "cost", "loop"])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--dpo_steps", type=int, default=20)
    main(parser.parse_args())
