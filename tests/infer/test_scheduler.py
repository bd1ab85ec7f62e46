"""The scheduler and the batch under memory pressure: the KV cache's budget holds (a request waits for room, one
that can never fit is refused alone), and an out-of-memory fails no request that fits: every answer is still
what it is alone."""

import pytest
import torch

from bactrian.infer import decoding
from bactrian.infer.routing import BASE
from bactrian.infer.scheduler import Scheduler

from support import PROMPTS, greedy


def run(engine, requests, max_rows=0):
    """(text, finish reason, error) of each request, and the most rows the batch held at once."""
    scheduler, results, most = Scheduler(engine, max_rows), {}, 0
    for index, request in enumerate(requests):
        scheduler.admit(index, request)
    texts = [""] * len(requests)
    while len(scheduler):
        for delta in scheduler.step():
            texts[delta.index] += delta.text
            if delta.finish_reason:
                results[delta.index] = (texts[delta.index], delta.finish_reason, delta.error, delta.status)
        most = max(most, len(scheduler.batch.all_rows()))
    return [results[i] for i in range(len(requests))], most


@pytest.fixture()
def requests(engine):
    return [greedy(engine, PROMPTS[n % len(PROMPTS)], BASE, max_new_tokens=10) for n in range(6)]


def test_the_kv_budget_holds_requests_back_until_they_fit(engine, requests, monkeypatch):
    alone = [engine.generate([request])[0][:2] for request in requests]
    widest = max(len(r.prompt_ids) + r.params.max_new_tokens for r in requests)
    monkeypatch.setattr(engine, "kv_budget_bytes", 2 * widest * engine.kv_bytes_per_token)
    results, most = run(engine, requests)
    assert [result[:2] for result in results] == alone
    assert most <= 2  # two rows' worst case fit, three do not


def test_a_request_that_can_never_fit_is_refused_alone(engine, requests, monkeypatch):
    monkeypatch.setattr(engine, "kv_budget_bytes", 40 * engine.kv_bytes_per_token)
    huge = greedy(engine, PROMPTS[0], BASE, max_new_tokens=4000)
    results, _ = run(engine, [huge, requests[0]])
    assert results[0][1:] == ("error", results[0][2], 400) and "KV cache" in results[0][2]
    assert results[1][1] in ("stop", "length") and not results[1][2]


def test_an_out_of_memory_in_a_decode_step_fails_no_request(engine, requests, monkeypatch):
    alone = [engine.generate([request])[0][:2] for request in requests]
    forward, failures = engine.forward, []

    def tight(ids, mask, positions, cache, adapters, keep=1):
        if ids.shape[1] == 1 and len(adapters) > 3:  # a decode step of more than 3 rows
            failures.append(len(adapters))
            first = cache.layers[0]  # fail half way, as CUDA does: the first layer has grown its cache already
            first.keys = torch.cat([first.keys, first.keys[:, :, -1:]], dim=2)
            first.values = torch.cat([first.values, first.values[:, :, -1:]], dim=2)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(ids, mask, positions, cache, adapters, keep)

    monkeypatch.setattr(engine, "forward", tight)
    results, _ = run(engine, requests)
    assert [result[:2] for result in results] == alone and failures


def test_an_out_of_memory_in_a_prefill_splits_it_and_one_alone_fails_only_itself(engine, requests, monkeypatch):
    alone = [engine.generate([request])[0][:2] for request in requests]
    forward = engine.forward

    def tight(ids, mask, positions, cache, adapters, keep=1):
        if ids.shape[1] > 1 and len(adapters) > 2:  # a prefill of more than 2 rows
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        if ids.shape[1] > 1 and ids.shape[1] == len(requests[5].prompt_ids) and len(adapters) == 1 \
                and torch.equal(ids[0].cpu(), torch.tensor(requests[5].prompt_ids)):
            raise torch.OutOfMemoryError("CUDA out of memory")
        return forward(ids, mask, positions, cache, adapters, keep)

    monkeypatch.setattr(engine, "forward", tight)
    requests[5] = greedy(engine, "A prompt no other request has, long enough to stand apart.", BASE)
    results, _ = run(engine, requests)
    assert [result[:2] for result in results[:5]] == alone[:5]
    assert results[5][1] == "error" and results[5][3] == 507


def test_out_of_memory_is_recognised_on_the_gpu_and_the_cpu():
    assert decoding.out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert decoding.out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert decoding.out_of_memory(MemoryError())
    assert not decoding.out_of_memory(RuntimeError("shape mismatch"))


def test_the_kv_size_of_a_token_follows_the_model(engine):
    from bactrian.infer.engine import kv_bytes_per_token

    config = engine.model.config
    heads = config.num_key_value_heads
    per_layer = 2 * heads * (config.hidden_size // config.num_attention_heads) * 4
    assert kv_bytes_per_token(config, torch.float32) == config.num_hidden_layers * per_layer
    assert kv_bytes_per_token(config, torch.bfloat16) * 2 == kv_bytes_per_token(config, torch.float32)
