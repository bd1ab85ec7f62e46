"""Where a one-row decode step's time goes (issue #29): `Engine.generate` of one greedy 33-token answer on Gemma 3
270M in fp32 (oneDNN-prepacked), bf16, int8 and fp16 weights, timed, then profiled with torch.profiler: the share of the
matrix products, and the rate at which they read their weights against the machine's bandwidth.

    python benchmarks/decode_profile.py

Prints a table and writes bench-out/decode_profile.json. Run it with nothing else on the machine."""

from __future__ import annotations

import time

from bench_out import save
from lowbit import copy_bandwidth_gb_s, weight_bytes_per_token
from torch.profiler import ProfilerActivity, profile

from bactrian.infer.engine import Engine
from bactrian.infer.requests import Request, SamplingParams

PRODUCTS = {"aten::mm", "aten::addmm", "aten::_int_mm", "mkldnn::_linear_pointwise", "aten::bmm",
            "quantized::linear_with_input_q_dq_qweight_dq_output_fp32", "quantized::linear_dynamic_fp16"}
MODES = {"float32": ("float32", "auto"), "bfloat16": ("bfloat16", "auto"), "int8": ("float32", "int8"),
         "fp16": ("float32", "fp16")}
TOKENS = 33


def measure(dtype: str, quantization: str) -> dict[str, float]:
    import torch

    engine = Engine("default", dtype=dtype, quantization=quantization)
    prompt = engine.catalog.render("base", "Write a short story about a camel crossing the desert.")

    def answer() -> int:
        return engine.generate([Request(prompt, SamplingParams(max_new_tokens=TOKENS, stop=["never"]))])[0][2]

    answer()
    started = time.perf_counter()
    tokens = answer()
    seconds = time.perf_counter() - started
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        answer()
    events = profiler.key_averages()
    products = sum(event.self_cpu_time_total for event in events if event.key in PRODUCTS) / 1e6
    total = sum(event.self_cpu_time_total for event in events) / 1e6
    read = weight_bytes_per_token(quantization, getattr(torch, dtype))
    return {"tok/s": tokens / seconds, "products share": products / total,
            "products GB/s": read * tokens / products / 1e9, "ms a token": 1000 * seconds / tokens,
            "ms a token in products": 1000 * products / tokens}


def main() -> None:
    results = {mode: measure(*settings) for mode, settings in MODES.items()}
    bandwidth = copy_bandwidth_gb_s()
    save("decode_profile", {"modes": results, "copy_gb_s": bandwidth})
    print(f"a 256 MiB copy: {bandwidth:.1f} GB/s (read + write)\n")
    print("| mode | tok/s | ms a token | of which matrix products | products' share of op time "
          "| weights read by the products |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for mode, row in results.items():
        print(f"| {mode} | {row['tok/s']:.1f} | {row['ms a token']:.0f} | {row['ms a token in products']:.0f} | "
              f"{100 * row['products share']:.0f}% | {row['products GB/s']:.1f} GB/s |")


if __name__ == "__main__":
    main()
