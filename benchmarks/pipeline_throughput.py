"""Request machinery throughput: `ChatClient` (cache, limits, retries; what `bactrian data` and the judge use)
against a minimal loopback OpenAI-compatible server (asyncio streams, another process) that answers every chat
request after a fixed latency, 16 rounds of requests per level. Reports
requests/s at 1 to 256 requests in flight against the ideal (in flight / latency), the client's CPU time per
request, and a rerun on the warm cache, which must send nothing.

    python benchmarks/pipeline_throughput.py [--latency 1.0]

Prints a table and writes bench-out/pipeline_throughput.json."""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_out import OUT, save

REPO = Path(__file__).resolve().parents[1]
LEVELS = (1, 4, 16, 64, 128, 256)

SERVER = """
# A minimal HTTP/1.1 keep-alive server on asyncio streams: it answers GET /v1/models and every POST to
# /v1/chat/completions after a fixed latency, spending as little CPU as possible, so the client is measured.
import asyncio, json, sys

LATENCY = float(sys.argv[2])
MESSAGE = {"role": "assistant", "content": "ok"}
CHAT = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                   "choices": [{"index": 0, "finish_reason": "stop", "message": MESSAGE}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}).encode()
MODEL = {"id": "m", "object": "model", "created": 0, "owned_by": "x"}
MODELS = json.dumps({"object": "list", "data": [MODEL]}).encode()

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            lines = head.decode("latin-1").split("\\r\\n")
            length = next((int(l.split(":")[1]) for l in lines if l.lower().startswith("content-length")), 0)
            if length:
                await reader.readexactly(length)
            if lines[0].startswith("POST"):
                await asyncio.sleep(LATENCY)
                body = CHAT
            else:
                body = MODELS
            writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: "
                         + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def drive(url: str, cache_path: Path, in_flight: int, count: int, salt: str) -> dict:
    from bactrian.endpoints.cache import RequestCache
    from bactrian.endpoints.client import ChatClient, RateLimits

    client = ChatClient(url, "none", RequestCache(cache_path), RateLimits(concurrency=in_flight))
    messages = [[{"role": "user", "content": f"{salt} question {i}"}] for i in range(count)]
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        await asyncio.gather(*(client.chat("m", m, max_tokens=4) for m in messages))
    finally:
        await client.close()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"requests": count, "sent": client.usage.requests_sent, "cached": client.usage.cached,
            "seconds": wall, "cpu_ms_per_request": 1000 * cpu / count}


def main(latency: float) -> None:
    OUT.mkdir(exist_ok=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(latency)])
    url = f"http://127.0.0.1:{port}/v1"
    try:
        time.sleep(3)
        cache = Path(tempfile.mkdtemp()) / "requests.sqlite"
        rows = []
        for in_flight in LEVELS:
            count = max(8, 16 * in_flight)
            result = asyncio.run(drive(url, cache, in_flight, count, f"level{in_flight}"))
            ideal = in_flight / latency
            rows.append({"in_flight": in_flight, **result, "requests_per_second": count / result["seconds"],
                         "ideal": ideal, "share_of_ideal": count / result["seconds"] / ideal})
        warm = asyncio.run(drive(url, cache, 256, 4 * 256, "level256"))
    finally:
        server.terminate()
        server.wait()
    print(f"\nserver latency {latency:.2f} s per request\n")
    print(f"{'in flight':>9} {'requests':>8} {'req/s':>8} {'ideal':>8} {'of ideal':>8} {'client CPU ms/req':>18}")
    for row in rows:
        print(f"{row['in_flight']:>9} {row['requests']:>8} {row['requests_per_second']:>8.1f} {row['ideal']:>8.1f} "
              f"{100 * row['share_of_ideal']:>7.1f}% {row['cpu_ms_per_request']:>18.2f}")
    print(f"\nwarm-cache rerun of the 256 level: {warm['sent']} requests sent, {warm['cached']} from cache, "
          f"{warm['seconds']:.2f} s")
    save("pipeline_throughput", {"latency": latency, "rows": rows, "warm": warm})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=1.0)
    main(parser.parse_args().latency)
