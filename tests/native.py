"""llama.cpp (llama-cpp-python) driven in a child process: a native consumer that dies with a signal (an
illegal instruction on a CPU it was not built for, a segfault) is then one failing test that names the
signal, and the rest of the suite runs and reports.

`in_child(function, **kwargs)` runs one of the functions below in a fresh Python process and returns its
JSON result; `fail_if_died(process)` does the same service for a server started with subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHILD_TIMEOUT_S = 900
README_HINT = "README, section Export: 'llama.cpp dies with an illegal instruction'"


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def in_child(function: str, **kwargs):
    done = subprocess.run([sys.executable, __file__, function, json.dumps(kwargs)], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    if done.returncode < 0:
        pytest.fail(f"llama.cpp died with {_signal_name(done.returncode)} in {function}; see the {README_HINT}.\n"
                    f"{done.stderr[-3000:]}", pytrace=False)
    if done.returncode:
        pytest.fail(f"{function} failed in its child process:\n{done.stderr[-3000:]}", pytrace=False)
    return json.loads(done.stdout.splitlines()[-1])


def fail_if_died(process: subprocess.Popen, name: str = "llama.cpp server") -> None:
    """Fail naming the signal when a server process died of one (call it where a request to it failed)."""
    code = process.poll()
    if code is not None and code < 0:
        pytest.fail(f"{name} died with {_signal_name(code)}; see the {README_HINT}.", pytrace=False)


@contextmanager
def llama_cpp_server(gguf: Path, alias: str, n_ctx: int = 1024) -> Iterator[str]:
    """llama.cpp's OpenAI server (`python -m llama_cpp.server`) on a free loopback port: its /v1 URL. A failure
    while it runs is reported as the server's death by a signal when that is what happened."""
    from test_server import free_port, wait_until_ready

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                               "--port", str(port), "--n_ctx", str(n_ctx), "--model_alias", alias],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/v1/models", process=server)
        yield f"http://127.0.0.1:{port}/v1"
    except Exception:
        fail_if_died(server)
        raise
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- what runs in the child ----------------------------------------------------------------------------
def _llama(model: str, lora: str | None = None, n_ctx: int = 128):
    import llama_cpp

    return llama_cpp.Llama(model, n_ctx=n_ctx, verbose=False, seed=0, lora_path=lora, logits_all=True)


def _greedy(llm, ids: list[int], steps: int) -> list[int]:
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) == steps:
            break
    return out


def greedy(model: str, prompts: list[list[int]], steps: int = 8, lora: str | None = None) -> list[list[int]]:
    """The greedy continuation of each prompt (token ids)."""
    llm = _llama(model, lora)
    return [_greedy(llm, prompt, steps) for prompt in prompts]


def greedy_text(model: str, prompts: list[str], steps: int = 8, n_ctx: int = 256) -> list[dict[str, list[int]]]:
    """Each text prompt tokenized by llama.cpp (BOS added, special tokens parsed) and its greedy continuation."""
    llm = _llama(model, n_ctx=n_ctx)
    results = []
    for prompt in prompts:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        results.append({"ids": ids, "tokens": _greedy(llm, ids, steps)})
    return results


def last_logits(model: str, prompts: list[list[int]]) -> list[list[float]]:
    """The logits after the last token of each prompt."""
    llm = _llama(model)
    scores = []
    for prompt in prompts:
        llm.reset()
        llm.eval(prompt)
        scores.append([float(x) for x in llm.scores[len(prompt) - 1]])
    return scores


def die_with(signal_name: str) -> None:
    """For the test of this module: die as a crashing native library would."""
    import os

    os.kill(os.getpid(), signal.Signals[signal_name])


if __name__ == "__main__":
    result = globals()[sys.argv[1]](**json.loads(sys.argv[2]))
    print(json.dumps(result))
