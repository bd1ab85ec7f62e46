"""Peak memory of `bactrian export` per format, relative to the base model's size on disk.

Base: the embedded default (Gemma 3 270M, fp32 safetensors) with a rank-16 q,k,v,o adapter. Each export runs
in its own process; its peak RSS (ru_maxrss) is compared with the size of the base weights on disk, and with
the RSS of a process that only imported torch and bactrian (the floor every run pays).

    python benchmarks/export_memory.py

Prints a table and writes bench-out/export_memory.json."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_out import OUT, save

REPO = Path(__file__).resolve().parents[1]
RUNS = [("hf", {"dtype": "f32"}), ("hf", {"dtype": "f16"}), ("gguf", {"gguf_type": "f32"}),
        ("gguf", {"gguf_type": "f16"}), ("gguf", {"gguf_type": "q8_0"}), ("gguf_adapter", {})]
# state_dict is the LLaMA layout only; the default is gemma3, so it is not measured here.


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_adapter(base_path: str, folder: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (folder / "adapter_model.safetensors").is_file():
        return folder
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path),
                           LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                      task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    model.save_pretrained(folder)
    return folder


def child(fmt: str, options: dict, adapter: str, output: str) -> None:
    import bactrian.export.run  # noqa: F401  (imports counted in the floor too)
    from bactrian.export.config import ExportConfig
    from bactrian.export.run import export

    started = time.perf_counter()
    export(ExportConfig(base_model="default", lora_weights=[adapter], output_dir=output, format=fmt, overwrite=True,
                        **options))
    print("RESULT " + json.dumps({"peak_rss_mb": peak_mb(), "seconds": time.perf_counter() - started}))


def floor() -> None:
    import torch  # noqa: F401

    import bactrian.export.run  # noqa: F401

    print("RESULT " + json.dumps({"peak_rss_mb": peak_mb()}))


def run_child(*args: str) -> dict:
    process = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    line = next((out for out in process.stdout.splitlines() if out.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{args} failed:\n{process.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    from bactrian.models import resolve

    base_path = Path(resolve("default").path)
    disk_mb = sum(p.stat().st_size for p in base_path.glob("*.safetensors")) / 1e6 * (1e6 / 2**20)
    adapter = make_adapter(str(base_path), OUT / "export-adapter")
    floor_mb = run_child("--floor")["peak_rss_mb"]
    rows = []
    for fmt, options in RUNS:
        label = f"{fmt} {' '.join(options.values())}".strip()
        output = OUT / "export" / label.replace(" ", "-")
        result = run_child("--child", fmt, json.dumps(options), str(adapter), str(output))
        rows.append({"format": label, **result, "vs_disk": result["peak_rss_mb"] / disk_mb,
                     "above_floor_vs_disk": (result["peak_rss_mb"] - floor_mb) / disk_mb})
    print(f"\nbase weights on disk: {disk_mb:.0f} MB; python + torch + bactrian alone: {floor_mb:.0f} MB\n")
    print(f"{'format':<16} {'peak RSS MB':>12} {'x disk':>7} {'(peak - floor) x disk':>22} {'seconds':>8}")
    for row in rows:
        print(f"{row['format']:<16} {row['peak_rss_mb']:>12.0f} {row['vs_disk']:>7.2f} "
              f"{row['above_floor_vs_disk']:>22.2f} {row['seconds']:>8.1f}")
    save("export_memory", {"disk_mb": disk_mb, "floor_mb": floor_mb, "rows": rows})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=4, metavar=("FORMAT", "OPTIONS", "ADAPTER", "OUTPUT"))
    parser.add_argument("--floor", action="store_true")
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments.child[0], json.loads(arguments.child[1]), arguments.child[2], arguments.child[3])
    elif arguments.floor:
        floor()
    else:
        main()
