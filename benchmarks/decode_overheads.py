"""What decoding spends beside the model's forward, before and after issue #28's two changes, on Gemma 3 270M's
262,144-token vocabulary (its real tokenizer; random logits):

- sampling a step's tokens: the former way (one row at a time: a full-vocabulary sort, a multinomial draw and
  about four waits for the device per row) against `decoding.sample` (every row at once, one wait a step);
- the answer's text at every step: decoding the whole answer again (the former way: quadratic in its length)
  against `Row.text` (incremental).

    python benchmarks/decode_overheads.py [--rounds 2]

Prints a table and writes bench-out/decode_overheads.json; the rounds are interleaved (former, new, former, ...).
Run it with nothing else on the machine."""

from __future__ import annotations

import argparse
import time

import torch
from bench_out import save

from bactrian.infer.decoding import Row, sample
from bactrian.infer.requests import Request, SamplingParams
from bactrian.models import load_tokenizer, resolve

SETTINGS = SamplingParams(temperature=0.7, top_p=0.9, top_k=50, seed=1)


def former_choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The per-row sampler this release replaced (decoding.choose_token), kept here as the baseline."""
    scaled = (logits - logits.max()) / params.temperature
    if params.top_k and params.top_k < scaled.shape[-1]:
        threshold = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < threshold, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        ordered[ordered.cumsum(-1) - ordered > params.top_p] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, ordered)
    probs = probs / probs.sum()
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        return int(logits.argmax())
    return int(torch.multinomial(probs, 1, generator=generator))


def sampling_ms(rows: int, way: str, steps: int = 10) -> float:
    logits = torch.randn(rows, 262_144, generator=torch.Generator().manual_seed(rows))
    generators = [torch.Generator().manual_seed(i) for i in range(rows)]
    started = time.perf_counter()
    for _ in range(steps):
        if way == "former":
            [former_choose(logits[i], SETTINGS, generators[i]) for i in range(rows)]
        else:
            draws = torch.stack([torch.rand((), generator=g) for g in generators])
            sample(logits, [SETTINGS] * rows, draws).tolist()
    return 1000 * (time.perf_counter() - started) / steps


def detokenizing_ms(tokenizer, ids: list[int], way: str) -> float:
    """Milliseconds to have the text after every token of an answer of len(ids) tokens."""
    row = Row(Request([0], SamplingParams()), 0, "cpu")
    started = time.perf_counter()
    for token in ids:
        row.tokens.append(token)
        if way == "former":
            tokenizer.decode(row.tokens, skip_special_tokens=True)
        else:
            row.text(tokenizer)
    return 1000 * (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds
    torch.set_num_threads(torch.get_num_threads())
    tokenizer = load_tokenizer(resolve("default").path)
    text = ("Voici une réponse assez longue, en français, avec des accents, des chiffres (1, 2, 3) et quelques mots "
            "d'une autre langue : 日本語、हिन्दी, русский. ") * 40
    answer = tokenizer(text, add_special_tokens=False)["input_ids"]
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for way in ("former", "new"):
            for rows in (1, 16, 64):
                results.setdefault(f"sample {rows} rows, {way} (ms a step)", []).append(sampling_ms(rows, way))
            for length in (128, 512):
                results.setdefault(f"text of a {length}-token answer, {way} (ms in all)", []).append(
                    detokenizing_ms(tokenizer, answer[:length], way))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; each figure is one round\n")
    print("| measure | rounds |\n| --- | ---: |")
    for key, values in results.items():
        print(f"| {key} | {', '.join(f'{v:.1f}' for v in values)} |")
    save("decode_overheads", results)


if __name__ == "__main__":
    main()
