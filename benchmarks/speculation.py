"""Prompt lookup decoding (`--speculation prompt_lookup`, issue #29) on Gemma 3 270M, in process (`Engine.generate`,
one request at a time: one person chatting):

1. what a step of one row costs when it checks k guessed tokens, against a plain step (k = 0), per mode: where
   guessing pays and how long a guess may grow (speculation.MOST_GUESSES);
2. answers with and without it, per mode and workload, two rounds interleaved: tokens a second, forwards a token,
   and whether every answer is plain decoding's token for token. Workloads: the base model on the Vicuna questions
   of 12 languages under the bactrian template (what serve_throughput.py and lowbit.py send), and an adapter on
   the same questions in its own template (`--adapter`, e.g. the one `bactrian demo` trains), whose answers
   repeat themselves less.

    python benchmarks/speculation.py [--adapter bench-out/int8-quality/demo/adapter] [--rounds 2]

Prints the tables and writes bench-out/speculation.json. Run it with nothing else on the machine."""

from __future__ import annotations

import argparse
import time

import torch
from bench_out import save
from serve_throughput import questions

from bactrian.infer.engine import Engine
from bactrian.infer.requests import Request, SamplingParams

MODES = {"bfloat16": ("bfloat16", "auto"), "fp16": ("float32", "fp16"), "float32": ("float32", "auto")}
WIDTHS = (0, 1, 2, 4, 8)
QUESTION_COUNT = 8
MAX_TOKENS = 64


def step_cost(engine: Engine) -> dict[int, float]:
    """Milliseconds of one row's forward over 1 + k positions after a 40-token prompt (the cache trimmed back after
    each), the median of 15."""
    from transformers import DynamicCache

    prompt = engine.catalog.render("base", questions(1)[0])
    cache = DynamicCache()
    ids = torch.tensor([prompt])
    engine.forward(ids, torch.ones_like(ids), torch.arange(len(prompt)).view(1, -1), cache, ["base"])
    costs = {}
    for guesses in WIDTHS:
        width = 1 + guesses
        step = torch.tensor([prompt[:width]])
        mask = torch.ones(1, len(prompt) + width, dtype=torch.long)
        positions = torch.arange(len(prompt), len(prompt) + width).view(1, -1)
        times = []
        for _ in range(15):
            started = time.perf_counter()
            engine.forward(step, mask, positions, cache, ["base"], keep=width)
            times.append(time.perf_counter() - started)
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[:, :, :len(prompt)], layer.values[:, :, :len(prompt)]
        costs[guesses] = 1000 * sorted(times)[len(times) // 2]
    return costs


def answers(engine: Engine, model: str) -> dict:
    """One request at a time: tokens a second, forwards, and the answers' tokens."""
    forwards = [0]
    forward = engine.forward

    def counted(*args, **kwargs):
        forwards[0] += 1
        return forward(*args, **kwargs)

    engine.forward = counted
    tokens, texts = 0, []
    started = time.perf_counter()
    for question in questions(QUESTION_COUNT):
        request = Request(engine.catalog.render(model, question), SamplingParams(max_new_tokens=MAX_TOKENS), model)
        text, _, count = engine.generate([request])[0]
        texts.append(text)
        tokens += count
    seconds = time.perf_counter() - started
    del engine.forward
    return {"tok/s": tokens / seconds, "tokens": tokens, "forwards": forwards[0], "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", default="")
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    adapters = [f"tuned={options.adapter}"] if options.adapter else []
    workloads = ["base", *(["tuned"] if adapters else [])]
    costs, runs = {}, {}
    for mode, (dtype, quantization) in MODES.items():
        engines = {speculation: Engine("default", adapters, dtype=dtype, quantization=quantization,
                                       speculation=speculation) for speculation in ("off", "prompt_lookup")}
        costs[mode] = step_cost(engines["off"])
        print(mode, "step ms by guesses", {k: round(v, 1) for k, v in costs[mode].items()}, flush=True)
        for round_ in range(options.rounds):
            for workload in workloads:
                for speculation, engine in engines.items():
                    run = answers(engine, workload)
                    runs.setdefault((mode, workload, speculation), []).append(run)
                    print(mode, workload, speculation, round_, f"{run['tok/s']:.1f} tok/s", flush=True)
        del engines
    results = {"step_ms": costs, "answers": {" / ".join(key): value for key, value in runs.items()}}
    save("speculation", results)
    report(costs, runs, workloads)


def report(costs: dict, runs: dict, workloads: list[str]) -> None:
    print("\n| mode | " + " | ".join(f"1 + {k} positions (ms)" for k in WIDTHS) + " |\n| --- |"
          + " ---: |" * len(WIDTHS))
    for mode, cost in costs.items():
        print(f"| {mode} | " + " | ".join(f"{cost[k]:.1f} ({cost[k] / cost[0]:.2f}x)" for k in WIDTHS) + " |")
    print("\n| mode | workload | tok/s off | tok/s prompt lookup | speed-up | forwards a token (lookup) "
          "| answers identical |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for mode in costs:
        for workload in workloads:
            off, on = runs[(mode, workload, "off")], runs[(mode, workload, "prompt_lookup")]
            same = sum(a == b for x, y in zip(off, on) for a, b in zip(x["texts"], y["texts"]))
            total = sum(len(x["texts"]) for x in off)
            speedup = ", ".join(f"{y['tok/s'] / x['tok/s']:.2f}x" for x, y in zip(off, on))
            print(f"| {mode} | {workload} | {rates(off)} | {rates(on)} | {speedup} | "
                  f"{on[0]['forwards'] / on[0]['tokens']:.2f} | {same}/{total} |")


def rates(runs: list[dict]) -> str:
    return ", ".join(f"{run['tok/s']:.1f}" for run in runs)


if __name__ == "__main__":
    main()
