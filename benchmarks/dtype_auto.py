"""What `--dtype auto` / `--bf16 auto` choose on this CPU, and whether it is the faster choice: `bactrian serve`
(Gemma 3 270M, the openai client on /v1/completions, greedy, 64 tokens, 1 and 16 clients) and `bactrian finetune`
(finetune_throughput.py's bactrian run on Gemma 3 270M) in float32, bfloat16 and auto, each configuration in
its own process, the rounds interleaved (fp32, bf16, auto, fp32, bf16, auto, ...).

    python benchmarks/dtype_auto.py              # two rounds
    python benchmarks/dtype_auto.py --rounds 1
    python benchmarks/dtype_auto.py --emulate-avx2   # oneDNN, MKL and ATen held to AVX2 (no auto: the rule
                                                     # reads the real CPU's flags)

Prints a table and writes bench-out/dtype_auto.json. Run it with nothing else on the machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
from bench_out import OUT, save
from serve_throughput import QUESTIONS, free_port, one_and_sixteen_clients, start, stop

from bactrian.models import AUTO_DTYPE_VARIABLE, auto_dtype, cpu_bf16_instructions

MODES = ("float32", "bfloat16", "auto")
FINETUNE = Path(__file__).resolve().parent / "finetune_throughput.py"
# The kernels a CPU with AVX2 only would run: oneDNN (bf16 and packed fp32 matmuls), MKL (fp32) and ATen's own.
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
EMULATION: dict[str, str] = {}


def environment(mode: str) -> dict[str, str]:
    """float32 and bfloat16 force what `auto` resolves to (serve's --dtype and finetune's --bf16 both follow it);
    auto leaves the rule alone."""
    env = {key: value for key, value in os.environ.items() if key != AUTO_DTYPE_VARIABLE} | EMULATION
    return env if mode == "auto" else {**env, AUTO_DTYPE_VARIABLE: mode}


def serve(mode: str) -> dict[str, float]:
    port = free_port()
    command = [sys.executable, "-m", "bactrian", "serve", "--port", str(port)]
    server = start(command, f"http://127.0.0.1:{port}/health", env=environment(mode))
    try:
        one, many = one_and_sixteen_clients(f"http://127.0.0.1:{port}")
    finally:
        stop(server)
    return {"serve_1_tokens_per_second": one["tokens_per_second"],
            "serve_16_tokens_per_second": many["tokens_per_second"]}


def finetune(mode: str, limit_s: float) -> dict[str, float | None]:
    """Its tokens/s, or None where it did not finish within `limit_s` (bf16 on kernels without bf16 instructions)."""
    try:
        process = subprocess.run([sys.executable, str(FINETUNE), "--child", "bactrian", "--models", "default"],
                                 capture_output=True, text=True, env=environment(mode), timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"finetune_tokens_per_second": None, "finetune_eval_loss": None, "finetune_timed_out_s": limit_s}
    line = next((out for out in process.stdout.splitlines() if out.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"finetune in {mode} failed:\n{process.stderr[-4000:]}")
    result = json.loads(line[7:])
    return {"finetune_tokens_per_second": result["tokens_per_second"], "finetune_eval_loss": result["eval_loss"]}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(rounds: int, modes: tuple[str, ...] = MODES, finetune_limit_s: float = 3600) -> None:
    if not QUESTIONS.is_dir():
        sys.exit(f"{QUESTIONS} is absent: this benchmark needs ../shared/data beside the checkout.")
    OUT.mkdir(exist_ok=True)
    choice = auto_dtype(torch.device("cpu"))
    machine = {"cpu": cpu_name(), "bf16_instructions": cpu_bf16_instructions(), "threads": torch.get_num_threads(),
               "auto": choice.describe(), "emulation": EMULATION}
    print(f"{machine['cpu']}, {machine['threads']} threads; {machine['auto']}", flush=True)
    runs = []
    for number in range(1, rounds + 1):
        for mode in modes:
            print(f"round {number}: {mode} ...", flush=True)
            runs.append({"round": number, "mode": mode, **serve(mode), **finetune(mode, finetune_limit_s)})
            print(json.dumps(runs[-1]), flush=True)
    report(machine, runs, modes)
    save("dtype_auto_avx2" if EMULATION else "dtype_auto", {"machine": machine, "runs": runs})


def report(machine: dict, runs: list[dict], modes: tuple[str, ...]) -> None:
    columns = ("serve_1_tokens_per_second", "serve_16_tokens_per_second", "finetune_tokens_per_second")
    print(f"\n{machine['auto']}" + (f"; kernels held to AVX2 ({machine['emulation']})" if EMULATION else "") + "\n")
    print(f"{'mode':<9} {'serve 1 client tok/s':>22} {'serve 16 clients tok/s':>24} {'finetune tok/s':>18} "
          f"{'eval loss':>10}")
    for mode in modes:
        mine = [run for run in runs if run["mode"] == mode]
        cells = [", ".join(_figure(run[column], ".1f") for run in mine) for column in columns]
        losses = ", ".join(_figure(run["finetune_eval_loss"], ".4f") for run in mine)
        print(f"{mode:<9} {cells[0]:>22} {cells[1]:>24} {cells[2]:>18} {losses:>10}")
    best = {column: max(("float32", "bfloat16"), key=lambda mode: sum(
        run[column] or 0.0 for run in runs if run["mode"] == mode)) for column in columns}
    chosen = "float32" if EMULATION else str(auto_dtype(torch.device("cpu")).dtype).removeprefix("torch.")
    verdicts = [f"{column.removesuffix('_tokens_per_second')}: {best[column]} faster"
                f" ({'auto agrees' if best[column] == chosen else 'auto picks ' + chosen})" for column in columns]
    print("\n" + "; ".join(verdicts))


def _figure(value: float | None, spec: str) -> str:
    return "timed out" if value is None else format(value, spec)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--finetune-limit-s", type=float, default=3600, help="give up on a finetune run after this")
    parser.add_argument("--emulate-avx2", action="store_true", help="hold the kernels to AVX2; fp32 and bf16 only "
                                                                     "(auto is fp32 on a real AVX2 CPU)")
    arguments = parser.parse_args()
    if arguments.emulate_avx2:
        EMULATION.update(AVX2_ONLY)
    main(arguments.rounds, ("float32", "bfloat16") if arguments.emulate_avx2 else MODES, arguments.finetune_limit_s)
