"""Sampling, vectorised: each row's token follows its own filtered distribution (temperature, top-k, top-p) and its
own generator, whatever else is in the batch; and the answer's text, detokenized incrementally, is what decoding
every token at once gives."""

import pytest
import torch
from transformers import AutoTokenizer

from bactrian.infer.decoding import Row, sample
from bactrian.infer.requests import Request, SamplingParams


def params(**settings) -> SamplingParams:
    return SamplingParams(**{"temperature": 1.0, **settings})


def test_a_row_samples_from_its_own_filtered_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    draws = torch.rand(20000)
    rows = logits.expand(len(draws), -1)
    expected = torch.softmax(logits / 0.7, -1)
    counts = torch.bincount(sample(rows, [params(temperature=0.7)] * len(draws), draws), minlength=6) / len(draws)
    assert torch.allclose(counts, expected, atol=0.015)
    top_k = torch.bincount(sample(rows, [params(top_k=2)] * len(draws), draws), minlength=6) / len(draws)
    assert top_k[2:].sum() == 0 and torch.allclose(top_k[:2], torch.softmax(logits[:2], -1), atol=0.015)
    nucleus = sample(rows, [params(top_p=0.5)] * len(draws), draws)  # 2.0 alone holds 0.56 of the mass
    assert set(nucleus.tolist()) == {0}


def test_each_row_keeps_its_settings_in_a_mixed_batch():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    settings = [params(temperature=0.5), params(top_k=3), params(top_p=0.3), params(temperature=2.0, top_k=5)]
    draws = torch.tensor([0.1, 0.5, 0.9, 0.99])
    together = sample(logits, settings, draws)
    alone = torch.cat([sample(logits[i:i + 1], [settings[i]], draws[i:i + 1]) for i in range(4)])
    assert torch.equal(together, alone)


def test_a_distribution_that_is_not_finite_falls_back_to_greedy():
    logits = torch.tensor([[0.0, 5.0, 1.0], [float("nan"), 1.0, 2.0]])
    chosen = sample(logits, [params(temperature=1e-30), params()], torch.tensor([0.5, 0.5]))
    assert chosen.tolist()[0] == 1


def test_a_row_draws_from_its_own_seeded_generator():
    def draws(seed):
        row = Row(Request([1], params(seed=seed)), 0, "cpu")
        return [float(row.draw()) for _ in range(3)]

    assert draws(7) == draws(7) != draws(8)


TEXTS = ["Hello world, how are you today?  Fine.\n\nNext line", "Grüße aus Köln: ça va très bien, merci !",
         "日本語のテキストと中文混合。😀🚀 end", "नमस्ते, आप कैसे हैं? مرحبا بكم"]


def assert_incremental_equals_whole(tokenizer, ids):
    row = Row(Request([0], SamplingParams()), 0, "cpu")
    for token in ids:
        row.tokens.append(token)
        assert row.text(tokenizer) == tokenizer.decode(row.tokens, skip_special_tokens=True)


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_text_is_what_decoding_everything_at_once_gives(tiny_gemma, text):
    """A byte-level BPE: CJK, Devanagari and emoji come in byte tokens, so characters complete over several."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma)
    assert_incremental_equals_whole(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])
    random_ids = torch.randint(0, len(tokenizer), (200,), generator=torch.Generator().manual_seed(3)).tolist()
    assert_incremental_equals_whole(tokenizer, random_ids)


@pytest.mark.slow
def test_incremental_text_with_the_real_gemma_tokenizer():
    """SentencePiece with byte fallback (Gemma 3's 262k vocabulary): spaces, byte pieces, specials skipped."""
    from bactrian.models import load_tokenizer, resolve

    tokenizer = load_tokenizer(resolve("default").path)
    for text in TEXTS:
        assert_incremental_equals_whole(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])
    random_ids = torch.randint(0, len(tokenizer), (300,), generator=torch.Generator().manual_seed(3)).tolist()
    assert_incremental_equals_whole(tokenizer, random_ids)


def test_top_k_among_candidates_picks_what_the_whole_vocabulary_would():
    """Top-k samples among the k largest only (no full sort), in vocabulary order: the same draw picks the same token
    as over the whole vocabulary with the others masked out."""
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(2))
    draws = torch.rand(64, generator=torch.Generator().manual_seed(3))
    threshold = torch.topk(logits, 40).values[:, -1:]
    masked = logits.masked_fill(logits < threshold, float("-inf"))
    for extra in ({}, {"top_p": 0.8}):
        fast = sample(logits, [params(top_k=40, **extra)] * 64, draws)
        whole = sample(masked, [params(**extra)] * 64, draws)
        assert torch.equal(fast, whole)
