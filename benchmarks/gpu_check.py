"""GPU readiness in one run (issue #28), sized for about 10 minutes on one H200, with nothing to download (tiny
models built from configs, and a random LLaMA-7B-shaped model built on the GPU in bf16). In this order:

1. device facts and the dtype rule;
2. a one-process NCCL group doing the reductions training does (CPU float64 sums, LoRA gradients);
3. SFT and DPO, padded and packed: a run killed (SIGKILL) at its first checkpoint and resumed, against a straight
   run: the largest weight difference;
4. QLoRA steps: the decoder's hidden-state dtype, peak memory, step time; the merged export against 4-bit base
   + adapter (largest logit difference, relative to the logits' range);
5. the engine: greedy answers batched vs alone vs transformers' `generate` (share identical), largest logit
   difference batched vs alone;
6. decode step time at 1, 16 and 64 rows, greedy and sampled, and the KV cache's memory at 16 and 64 rows x 1k
   tokens (computed and measured);
7. the GPU-marked tests (`pytest -m gpu`).

    python benchmarks/gpu_check.py              # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run    # every check on the CPU, tiny sizes: the script's own plumbing

Prints one table and writes bench-out/gpu_check.json. Each check's failure is a row of the table, not the end of
the run."""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_out import save

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import (  # noqa: E402 - the test suite's builders of tiny models and runs
    adapter_weights,
    build_model,
    kill_then_resume,
    make_config,
    max_difference,
    sample_rows,
    write_jsonl,
)

ROWS: list[dict[str, str]] = []


@dataclass
class Context:
    device: torch.device
    dry_run: bool
    work: Path

    def tiny(self, name: str, hidden: int = 32) -> Path:
        folder = self.work / name
        if not folder.exists():
            build_model(folder, "llama", hidden=hidden)
        return folder


def record(check: str, result: str, figure: str = "", note: str = "") -> None:
    ROWS.append({"check": check, "result": result, "figure": figure, "note": note})
    print(f"[{check}] {result} {figure} {note}", flush=True)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- 1 -----------------------------------------------------------------------------------------------------------
def device_facts(ctx: Context) -> None:
    from bactrian.models import auto_dtype

    choice = auto_dtype(ctx.device)
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        facts = (f"{props.name}, capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
                 f"torch {torch.__version__}, CUDA {torch.version.cuda}, is_bf16_supported "
                 f"{torch.cuda.is_bf16_supported()}")
    else:
        facts = f"CPU, torch {torch.__version__}"
    record("device", "ok", facts)
    record("dtype rule", "ok", str(choice.dtype).removeprefix("torch."), choice.reason)


# -- 2 -----------------------------------------------------------------------------------------------------------
def reductions(ctx: Context) -> None:
    import torch.distributed as dist

    from bactrian.train.distributed import DistributedContext

    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        group = DistributedContext(rank=0, world_size=2, local_rank=0)  # enabled: every reduction really runs
        sums = torch.tensor([[1.5, 2.0], [3.0, 4.0]], dtype=torch.float64)  # as the loss and eval sums are kept
        group.sum_(sums)
        weight = torch.nn.Parameter(torch.ones(3, device=ctx.device))
        weight.grad = torch.full((3,), 0.5, device=ctx.device)
        group.sum_gradients([weight])
        ok = sums.tolist() == [[1.5, 2.0], [3.0, 4.0]] and weight.grad.tolist() == [0.5] * 3
        record("reductions", "ok" if ok else "WRONG", backend, "CPU float64 sums and LoRA gradients, world of 1")
    finally:
        dist.destroy_process_group()


# -- 3 -----------------------------------------------------------------------------------------------------------
def training_resume(ctx: Context) -> None:
    model = ctx.tiny("llama")
    data = ctx.work / "sft-data"
    data.mkdir()
    write_jsonl(data / "fr.jsonl", sample_rows("fr", 8))
    pairs = ctx.work / "dpo-data"
    pairs.mkdir()
    write_jsonl(pairs / "fr.jsonl", [{**row, "chosen": row["output"], "rejected": "Non."}
                                     for row in sample_rows("fr", 8)])
    steps = 6 if ctx.dry_run else 12
    for method, source in (("sft", data), ("dpo", pairs)):
        for packing in (False, True):
            name = f"{method} {'packed' if packing else 'padded'}"
            common = dict(method=method, max_steps=steps, global_batch_size=4, micro_batch_size=2, val_set_size=0,
                          packing=packing, bf16="auto", learning_rate=3e-3)
            started = time.perf_counter()
            straight = ctx.work / f"{method}-{packing}-straight"
            from bactrian.train.finetune import finetune

            finetune(make_config(model, source, straight, **common))
            killed = ctx.work / f"{method}-{packing}-killed"
            kill_then_resume(make_config(model, source, killed, save_steps=2, **common))
            difference = max_difference(adapter_weights(straight), adapter_weights(killed))
            record(f"resume {name}", "ok" if difference < 1e-2 else "DIFFERS", f"max |dw| {difference:.2e}",
                   f"{time.perf_counter() - started:.0f} s; bf16 on a GPU: within tolerance, not exact")


# -- 4 -----------------------------------------------------------------------------------------------------------
def qlora(ctx: Context) -> None:
    from peft import PeftModel

    from bactrian.export.config import ExportConfig
    from bactrian.export.run import export
    from bactrian.models import load_model
    from bactrian.train.finetune import finetune

    model = ctx.tiny("llama-qlora", hidden=64)  # bitsandbytes' 4-bit blocks want 64 columns
    data = ctx.work / "qlora-data"
    data.mkdir()
    write_jsonl(data / "fr.jsonl", sample_rows("fr", 8))
    seen: set[str] = set()

    def watch(module, _, output):
        if type(module).__name__.endswith("DecoderLayer"):
            hidden = output[0] if isinstance(output, tuple) else output
            seen.add(str(hidden.dtype).removeprefix("torch."))

    hook = torch.nn.modules.module.register_module_forward_hook(watch)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    started = time.perf_counter()
    steps = 4
    out = ctx.work / "qlora-adapter"
    try:
        finetune(make_config(model, data, out, load_4bit=True, bf16="auto", max_steps=steps, val_set_size=0))
    finally:
        hook.remove()
    per_step = (time.perf_counter() - started) / steps
    record("qlora", "ok", f"hidden {','.join(sorted(seen))}; peak {peak_memory_mb(ctx.device):.0f} MB",
           f"{per_step:.2f} s a step with loading (4-bit NF4 base)")
    merged = export(ExportConfig(base_model=str(model), lora_weights=[str(out)], output_dir=str(ctx.work / "merged"),
                                 overwrite=True))
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]], device=ctx.device)
    loaded = load_model(str(model), load_4bit=True, device=ctx.device)
    quantized = PeftModel.from_pretrained(loaded.model, out).eval()
    full = load_model(str(merged), device=ctx.device, dtype=torch.float32).model.eval()
    with torch.no_grad():
        a, b = quantized(ids).logits.float(), full(ids).logits.float()
    relative = float((a - b).abs().max() / (b.max() - b.min()))
    record("qlora export", "ok", f"max |dlogit| / range {relative:.3f}",
           "merged into full-precision weights vs the 4-bit base + adapter it trained as")


# -- 5 -----------------------------------------------------------------------------------------------------------
def engine_correctness(ctx: Context) -> None:
    from bactrian.infer.engine import Engine
    from bactrian.infer.requests import Request, SamplingParams

    model = ctx.tiny("llama")
    engine = Engine(str(model), dtype="auto")
    prompts = [engine.catalog.render("base", text) for text in ("Name a colour.", "Bonjour !", "Zähle bis drei.",
                                                                 "What is two plus two?")]
    requests = [Request(ids, SamplingParams(max_new_tokens=16)) for ids in prompts]
    alone = [engine.generate([request])[0][0] for request in requests]
    batched = [text for text, _, _ in engine.generate(requests)]
    reference = []
    for ids in prompts:
        tensor = torch.tensor([ids], device=engine.device)
        with torch.no_grad():
            out = engine.model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                                        max_new_tokens=16, pad_token_id=engine.tokenizer.pad_token_id)
        reference.append(engine.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))
    share = sum(x == y for x, y in zip(batched, alone)) / len(alone)
    share_generate = sum(x == y for x, y in zip(alone, reference)) / len(alone)
    width = max(map(len, prompts))
    pad = engine.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=engine.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=engine.device)
    with torch.no_grad():
        together = engine.model(input_ids=ids, attention_mask=mask,
                                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1].float()
        single = torch.cat([engine.model(input_ids=torch.tensor([p], device=engine.device)).logits[:, -1].float()
                            for p in prompts])
    difference = float((together - single).abs().max())
    record("engine", "ok", f"batched = alone {share:.0%}; alone = generate {share_generate:.0%}",
           f"max |dlogit| batched vs alone {difference:.2e} ({str(engine.model.dtype).removeprefix('torch.')})")


# -- 6 -----------------------------------------------------------------------------------------------------------
class RandomModel:
    """A `protocols.DecodingModel` over a randomly initialised LlamaForCausalLM: decoding's speed, no weights."""

    def __init__(self, device: torch.device, dry_run: bool):
        from transformers import LlamaConfig, LlamaForCausalLM

        from bactrian.infer.engine import cache_keyword, kv_bytes_per_token

        size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, vocab_size=512) if dry_run else \
            dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000)  # LLaMA-7B
        config = LlamaConfig(**size, max_position_embeddings=4096)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        with torch.device(device):
            self.model = LlamaForCausalLM(config).to(dtype).eval()
        self.device, self.lock, self.eos_token_ids = device, threading.Lock(), {-1}
        self.tokenizer = type("Ids", (), {"pad_token_id": 0, "decode": lambda _, ids, **__: " ".join(map(str, ids))})()
        self.kv_bytes_per_token = kv_bytes_per_token(config, dtype)
        self.kv_budget_bytes = 0
        self.mode = {"dtype": str(dtype).removeprefix("torch."), "quantization": "none"}
        self.cache_keyword = cache_keyword(self.model)

    @torch.no_grad()
    def forward(self, ids, mask, positions, cache, adapters):
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          logits_to_keep=1, **{self.cache_keyword: cache}).logits

    def beam_search(self, index, request):
        raise NotImplementedError


def decode_speed(ctx: Context) -> None:
    from bactrian.infer.requests import Request, SamplingParams
    from bactrian.infer.scheduler import Scheduler

    model = RandomModel(ctx.device, ctx.dry_run)
    steps = 8 if ctx.dry_run else 24
    for rows in (1, 16, 64):
        for mode, params in (("greedy", {}), ("sampled", {"temperature": 0.8, "top_p": 0.9, "top_k": 50})):
            scheduler = Scheduler(model)
            for index in range(rows):
                settings = SamplingParams(max_new_tokens=steps + 2, seed=index, **params)
                scheduler.admit(index, Request(list(range(1, 17)), settings))
            scheduler.step()  # the prefill
            synchronize(ctx.device)
            started = time.perf_counter()
            for _ in range(steps):
                scheduler.step()
            synchronize(ctx.device)
            step_ms = 1000 * (time.perf_counter() - started) / steps
            record(f"decode {rows} rows {mode}", "ok", f"{step_ms:.1f} ms a step")
    tokens = 64 if ctx.dry_run else 1024
    for rows in (16, 64):
        computed = rows * tokens * model.kv_bytes_per_token / 2**20
        measured = measure_kv(model, rows, tokens)
        record(f"KV cache {rows} rows x {tokens}", "ok", f"{computed:.0f} MiB computed",
               f"{measured:.0f} MiB measured" if measured is not None else "measured on a GPU only")


def measure_kv(model: RandomModel, rows: int, tokens: int) -> float | None:
    from transformers import DynamicCache

    if model.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(model.device)
    cache = DynamicCache()
    ids = torch.randint(1, 1000, (rows, tokens), device=model.device)
    for start in range(0, tokens, 256):  # as the engine prefills: in chunks
        chunk = ids[:, start:start + 256]
        model.forward(chunk, torch.ones(rows, start + chunk.shape[1], device=model.device, dtype=torch.long),
                      torch.arange(start, start + chunk.shape[1], device=model.device).expand(rows, -1), cache, [])
    torch.cuda.synchronize()
    held = (torch.cuda.memory_allocated(model.device) - before) / 2**20
    del cache
    torch.cuda.empty_cache()
    return held


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- 7 -----------------------------------------------------------------------------------------------------------
def gpu_tests(ctx: Context) -> None:
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(root / "tests")]
    if ctx.dry_run:
        command.append("--collect-only")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BACTRIAN_TEST_GPU": "1"})
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    record("gpu tests", "ok" if done.returncode in (0, 5) else "FAILED", summary,
           "collected only (dry run)" if ctx.dry_run else "")


CHECKS = (device_facts, reductions, training_resume, qlora, engine_correctness, decode_speed, gpu_tests)


def table() -> str:
    lines = ["| check | result | figure | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['check']} | {r['result']} | {r['figure']} | {r['note']} |" for r in ROWS]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="Run every check on the CPU with tiny sizes.")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("No CUDA device: run with --dry-run to check the script on the CPU.", file=sys.stderr)
        return 2
    ctx = Context(torch.device("cpu") if args.dry_run else torch.device("cuda"), args.dry_run,
                  Path(tempfile.mkdtemp(prefix="gpu-check-")))
    os.environ.setdefault("BACTRIAN_HOME", str(ctx.work / "home"))
    for check in CHECKS:
        started = time.perf_counter()
        try:
            check(ctx)
        except Exception as exc:  # noqa: BLE001 - a check that fails is a row of the table
            traceback.print_exc()
            record(check.__name__, "ERROR", f"{type(exc).__name__}: {str(exc)[:160]}")
        print(f"  ({check.__name__}: {time.perf_counter() - started:.0f} s)", flush=True)
    print(table())
    save("gpu_check_dry_run" if args.dry_run else "gpu_check", {"device": str(ctx.device), "rows": ROWS})
    return 1 if any(row["result"] not in ("ok",) for row in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
