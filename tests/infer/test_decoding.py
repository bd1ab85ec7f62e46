"""The decoding batch: a request gets in a mixed batch what it gets alone (greedy, seeded sampling, rows joining a
running batch, a bounded stream refilling its rows), stops by length, stop string or EOS, streams deltas, and
answers token for token as transformers' `generate`."""

import pytest
import torch

from bactrian.infer.engine import Engine
from bactrian.infer.requests import Request, SamplingParams
from bactrian.infer.routing import BASE

from support import PROMPTS, greedy


def test_mixed_batch_gives_each_request_what_it_gets_alone(engine):
    requests = [greedy(engine, prompt, adapter) for prompt in PROMPTS for adapter in (BASE, "fr", "de")]
    alone = [engine.generate([request])[0] for request in requests]
    together = engine.generate(requests)
    assert together == alone
    texts = {adapter: engine.generate([greedy(engine, PROMPTS[0], adapter)])[0][0] for adapter in (BASE, "fr", "de")}
    assert len(set(texts.values())) == 3  # the adapter really changes the answer


def test_a_bounded_stream_refills_its_batch_as_rows_finish(engine, monkeypatch):
    """max_rows caps the rows in flight; a finished row's place goes to the next request at once (requests are
    taken lazily), and every answer is what it is alone."""
    from bactrian.infer.decoding import DecodeBatch

    requests = [greedy(engine, PROMPTS[n % 4], BASE, max_new_tokens=2 + 3 * (n % 3)) for n in range(9)]
    alone = [engine.generate([request])[0] for request in requests]
    in_flight, taken = [], []
    step = DecodeBatch.step
    monkeypatch.setattr(DecodeBatch, "step", lambda self: (in_flight.append(len(self)), (yield from step(self)))[1])

    def lazily():
        for request in requests:
            taken.append(len(in_flight))  # how many steps had run when this request was asked for
            yield request

    texts = [""] * len(requests)
    for delta in engine.stream(lazily(), max_rows=3):
        texts[delta.index] += delta.text
    assert texts == [text for text, _, _ in alone]
    assert taken[:3] == [0, 0, 0] and taken[-1] > 0
    assert set(in_flight[:taken[-1]]) == {3} and max(in_flight) == 3  # full until the last request was taken


def test_seeded_sampling_does_not_depend_on_the_batch(engine):
    sampled = [greedy(engine, prompt, "fr", temperature=0.9, top_p=0.9, top_k=50, seed=7) for prompt in PROMPTS]
    alone = [engine.generate([request])[0] for request in sampled]
    assert engine.generate(sampled) == alone
    other_seed = greedy(engine, PROMPTS[0], "fr", temperature=0.9, top_p=0.9, top_k=50, seed=8, max_new_tokens=30)
    same_seed = greedy(engine, PROMPTS[0], "fr", temperature=0.9, top_p=0.9, top_k=50, seed=7, max_new_tokens=30)
    assert engine.generate([other_seed]) != engine.generate([same_seed])


def test_length_and_stop_strings(engine):
    text, reason, tokens = engine.generate([greedy(engine, PROMPTS[1], BASE, max_new_tokens=9)])[0]
    assert reason == "length" and tokens == 9
    stop = text[3:6]
    cut, reason, _ = engine.generate([greedy(engine, PROMPTS[1], BASE, max_new_tokens=9, stop=[stop])])[0]
    assert reason == "stop" and cut == text[: text.find(stop)]


def test_streaming_deltas_add_up_to_the_answer(engine):
    request = greedy(engine, PROMPTS[0], "de", max_new_tokens=10)
    deltas = list(engine.stream([request]))
    assert len(deltas) > 1 and deltas[-1].finish_reason
    whole = engine.generate([greedy(engine, PROMPTS[0], "de", max_new_tokens=10)])[0][0]
    assert "".join(d.text for d in deltas) == whole


def test_eos_ends_a_request(tiny_llama):
    engine = Engine(str(tiny_llama), dtype="float32")
    prompt = engine.catalog.render(BASE, PROMPTS[0])
    with torch.no_grad():
        first = int(engine.model(torch.tensor([prompt])).logits[0, -1].argmax())
    engine.tokenizer.eos_token_id = first  # make the model's first greedy choice the end of sequence
    text, reason, tokens = engine.generate([Request(prompt, SamplingParams(max_new_tokens=5))])[0]
    assert (text, reason, tokens) == ("", "stop", 1)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_greedy_equals_transformers_generate_for_the_base_and_an_adapter(engine, tiny_llama, tiny_gemma,
                                                                         tiny_adapters, arch):
    """Token for token, batched with each other; on gemma3 past its 64-token sliding window."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = tiny_llama if arch == "llama" else tiny_gemma
    engine = engine if arch == "llama" else Engine(str(tiny_gemma), [], dtype="float32")
    steps = 16 if arch == "llama" else 90
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), tiny_adapters["fr"]).eval()
    jobs = [(adapter, prompt) for adapter in (("base", "fr") if arch == "llama" else ("base",)) for prompt in PROMPTS]
    batched = engine.generate([greedy(engine, prompt, adapter, max_new_tokens=steps) for adapter, prompt in jobs])
    for (adapter, prompt), (text, _, count) in zip(jobs, batched):
        ids = torch.tensor([engine.catalog.render(adapter, prompt)])
        model = base if adapter == "base" else tuned
        with torch.no_grad():
            reference = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                                       do_sample=False, pad_token_id=engine.tokenizer.pad_token_id)
        new = reference[0, ids.shape[1]:].tolist()
        assert count == len(new), (adapter, prompt)
        assert text == engine.tokenizer.decode(new, skip_special_tokens=True), (adapter, prompt)
    assert max(count for _, _, count in batched) == steps  # at least one ran its whole budget


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_rows_that_join_a_running_batch_get_what_they_get_alone(engine, tiny_gemma, arch):
    """Rows join mid-decode (prefilled in 16-token chunks, merged by padding the shorter cache) and leave when
    done; on gemma3 the answers run past its 64-token sliding window."""
    from bactrian.infer.decoding import DecodeBatch, Row

    engine = engine if arch == "llama" else Engine(str(tiny_gemma), [], dtype="float32")
    jobs = [("fr", PROMPTS[0]), ("base", PROMPTS[1] * 3), ("de", PROMPTS[2]), ("fr", PROMPTS[3])]
    jobs = [(adapter if arch == "llama" else "base", prompt) for adapter, prompt in jobs]
    requests = [greedy(engine, prompt, adapter, max_new_tokens=80 if i % 2 else 10, stop=["zz"] if i == 0 else [])
                for i, (adapter, prompt) in enumerate(jobs)]
    truth = [engine.generate([request])[0][0] for request in requests]
    joins = (0, 3, 4, 9)
    texts = [""] * len(requests)
    with engine.lock:
        batch = DecodeBatch(engine, prefill_tokens=16)
        for step in range(200):
            if step in joins:
                index = joins.index(step)
                batch.admit([Row(requests[index], index, "cpu")])
            for delta in batch.step():
                texts[delta.index] += delta.text
            if step > joins[-1] and not len(batch):
                break
    assert texts == truth
