"""Serving throughput: `bactrian serve` driven by the official openai client at 1, 4, 16 and 64 concurrent
clients on the embedded default (Gemma 3 270M), against a baseline of the same requests answered one by one
with `model.generate` in this process; and a mixed workload where each request names a different adapter
against one where all name the same.

Prompts: the multilingual Vicuna questions of ../shared/data/chat-eval/vicuna-80. Greedy, 32 new tokens.

    python benchmarks/serve_throughput.py

Prints a table and writes bench-out/serve_throughput.json."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = REPO.parent / "shared" / "data" / "chat-eval" / "vicuna-80"
OUT = REPO / "bench-out"
MAX_TOKENS = 32
LEVELS = (1, 4, 16, 64)
ADAPTERS = 16


def prompts(count: int) -> list[str]:
    texts = [json.loads(line)["text"] for path in sorted(QUESTIONS.glob("questions_*.jsonl"))
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [texts[(i * 37) % len(texts)] for i in range(count)]


def make_adapters(base_path: str, folder: Path) -> list[str]:
    """ADAPTERS random rank-16 LoRA adapters on q,k,v,o of the base (their weights do not matter here)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    names = [f"a{i}" for i in range(ADAPTERS)]
    if all((folder / name / "adapter_config.json").is_file() for name in names):
        return names
    config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path), config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if "lora_B" in key:
                param.normal_(0, 0.01)
    model.save_pretrained(folder)  # adapters not named "default" go to folder/<name>/
    return names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def one_request(client, model: str, question: str) -> dict:
    started = time.perf_counter()
    first, tokens = None, 0
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                  max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                                  stream_options={"include_usage": True})
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - started, "ttft": first or 0.0, "tokens": tokens}


async def drive(url: str, clients: int, requests: list[tuple[str, str]]) -> dict:
    import openai

    queue = list(requests)

    async def worker(client) -> list[dict]:
        done = []
        while queue:
            model, question = queue.pop()
            done.append(await one_request(client, model, question))
        return done

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600) as client:
        started = time.perf_counter()
        results = [r for batch in await asyncio.gather(*(worker(client) for _ in range(clients))) for r in batch]
        wall = time.perf_counter() - started
    latencies = sorted(r["latency"] for r in results)
    return {"clients": clients, "requests": len(results), "tokens_per_second": sum(r["tokens"] for r in results) / wall,
            "ttft_p50": statistics.median(r["ttft"] for r in results), "latency_p50": statistics.median(latencies),
            "latency_p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}


def sequential_baseline(base_path: str, questions: list[str]) -> dict:
    """The same requests answered one at a time with transformers' model.generate."""
    from bactrian.models import load_model
    from bactrian.prompts import load_template

    loaded = load_model("default")
    template = load_template("bactrian")
    tokens, started = 0, time.perf_counter()
    for question in questions:
        ids = loaded.tokenizer(template.render(question), return_tensors="pt")
        with torch.no_grad():
            output = loaded.model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False,
                                           pad_token_id=loaded.tokenizer.pad_token_id)
        tokens += output.shape[1] - ids["input_ids"].shape[1]
    return {"clients": 1, "requests": len(questions), "tokens_per_second": tokens / (time.perf_counter() - started)}


def main() -> None:
    from bactrian.models import resolve

    if not QUESTIONS.is_dir():
        sys.exit(f"{QUESTIONS} is absent: this benchmark needs ../shared/data beside the checkout.")
    OUT.mkdir(exist_ok=True)
    base_path = resolve("default").path
    names = make_adapters(base_path, OUT / "serve-adapters")
    baseline = sequential_baseline(base_path, prompts(8))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bactrian", "serve", "--adapters_dir",
                               str(OUT / "serve-adapters"), "--port", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url)
        rows = []
        for clients in LEVELS:
            questions = prompts(max(8, 2 * clients))
            same = [("a0", question) for question in questions]
            rows.append({"workload": "same adapter", **asyncio.run(drive(url, clients, same))})
        questions = prompts(32)
        rows.append({"workload": "mixed adapters",
                     **asyncio.run(drive(url, 16, [(names[i % len(names)], q) for i, q in enumerate(questions)]))})
        rows.append({"workload": "same adapter (mixed's twin)",
                     **asyncio.run(drive(url, 16, [("a0", q) for q in questions]))})
    finally:
        server.terminate()
        server.wait()
    report(baseline, rows)


def _wait_ready(url: str) -> None:
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
    sys.exit("server did not start")


def report(baseline: dict, rows: list[dict]) -> None:
    print(f"\nbaseline: model.generate one request at a time: {baseline['tokens_per_second']:.1f} tokens/s\n")
    print(f"{'workload':<28} {'clients':>7} {'tokens/s':>9} {'vs base':>8} {'TTFT p50':>9} {'p50 s':>7} {'p95 s':>7}")
    for row in rows:
        print(f"{row['workload']:<28} {row['clients']:>7} {row['tokens_per_second']:>9.1f} "
              f"{row['tokens_per_second'] / baseline['tokens_per_second']:>7.2f}x {row['ttft_p50']:>9.2f} "
              f"{row['latency_p50']:>7.2f} {row['latency_p95']:>7.2f}")
    mixed, same = rows[-2]["tokens_per_second"], rows[-1]["tokens_per_second"]
    print(f"\nmixed adapters take {same / mixed:.2f}x the time of one adapter for the same requests (16 clients)")
    (OUT / "serve_throughput.json").write_text(json.dumps({"baseline": baseline, "rows": rows}, indent=2) + "\n")
    print(f"wrote {OUT / 'serve_throughput.json'}")


if __name__ == "__main__":
    main()
