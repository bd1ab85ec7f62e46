from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from bactrian.prompts import load_template
from bactrian.records import Record
from bactrian.train import dataset as ds
from bactrian.train import tokenize


@pytest.fixture()
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def _record(output="Red is a primary colour.", input=""):
    return Record("x-1", "en", "Name a primary colour.", input, output)


def _example(tokenizer, cutoff_len=256, train_on_inputs=False, record=None):
    record = record or _record()
    template = load_template("bactrian")
    ((ids, masked, _),) = tokenize.tokenize_batch([record], tokenizer, template, cutoff_len, train_on_inputs)
    return ds.Example.from_tokens(record.id, record.lang, ids, masked)


def test_prompt_tokens_masked_and_output_plus_eos_learned(tokenizer):
    template = load_template("bactrian")
    example = _example(tokenizer)
    prompt_ids = tokenizer(template.render("Name a primary colour.", ""))["input_ids"]
    output_ids = tokenizer("Red is a primary colour.", add_special_tokens=False)["input_ids"]
    assert list(example.input_ids) == prompt_ids + output_ids + [tokenizer.eos_token_id]
    assert list(example.labels) == [-100] * len(prompt_ids) + output_ids + [tokenizer.eos_token_id]
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    with_inputs = _example(tokenizer, train_on_inputs=True)
    assert with_inputs.labels == with_inputs.input_ids


def test_batch_tokenization_equals_the_tokenizers_own_call(tokenizer):
    texts = ["Name a primary colour.", "Écris une salutation.", "", "2 + 3 = 5."]
    for special in (True, False):
        assert tokenize.encode(tokenizer, texts, special) == tokenizer(texts, add_special_tokens=special)["input_ids"]


def test_truncation_keeps_eos_of_examples_that_fit(tokenizer):
    full = _example(tokenizer)
    exact = _example(tokenizer, cutoff_len=len(full.input_ids))
    assert exact.input_ids[-1] == tokenizer.eos_token_id
    cut = _example(tokenizer, cutoff_len=len(full.input_ids) - 3)
    assert len(cut.input_ids) == len(full.input_ids) - 3 and cut.input_ids == full.input_ids[:-3]
    assert _example(tokenizer, cutoff_len=4).num_targets == 0


def test_validation_split_is_stratified_by_language_and_seeded():
    langs = np.array(["en"] * 600 + ["fr"] * 300 + ["sw"] * 100)
    train, val = ds.stratified_split(langs, 100)
    assert Counter(langs[val]) == {"en": 60, "fr": 30, "sw": 10}
    assert len(train) == 900 and not set(train) & set(val)
    assert np.array_equal(ds.stratified_split(langs, 100)[1], val)


def test_language_temperature_probabilities():
    counts = {"en": 900, "sw": 100}
    assert ds.language_probabilities(counts, 1.0) == pytest.approx({"en": 0.9, "sw": 0.1})
    flat = ds.language_probabilities(counts, 1e6)
    assert flat["en"] == pytest.approx(0.5, abs=1e-3)
    t2 = ds.language_probabilities(counts, 2.0)
    assert t2["sw"] == pytest.approx(10 / (30 + 10))


def test_epoch_order_follows_temperature_quotas():
    langs = np.array(["en"] * 90 + ["sw"] * 10)
    order = ds.epoch_order(langs, 2.0, seed=1, epoch=0)
    assert Counter(langs[order]) == {"en": 75, "sw": 25} and len(order) == 100
    assert len(set(order[langs[order] == "en"])) == 75  # drawn without repeats while a language lasts
    plain = ds.epoch_order(langs, 1.0, seed=1, epoch=0)
    assert sorted(plain) == list(range(100)) and list(plain) != list(range(100))
    assert np.array_equal(plain, ds.epoch_order(langs, 1.0, seed=1, epoch=0))
    assert not np.array_equal(plain, ds.epoch_order(langs, 1.0, 1, 1))


def test_packing_fills_rows_and_restarts_positions():
    examples = [ds.Example(str(i), "en", tuple(range(10, 10 + n)), tuple([-100] + list(range(11, 10 + n))))
                for i, n in enumerate([5, 3, 4, 2])]
    rows = ds.pack_rows([5, 3, 4, 2], capacity=8)
    assert sorted(sum(rows, [])) == [0, 1, 2, 3] and len(rows) == 2
    (batch,) = ds.micro_batches(examples, micro_batch_size=4, pad_id=0, packing=True, row_tokens=8,
                                group_by_length=False)
    assert batch.attention_mask is None and batch.input_ids.shape == (2, 8)
    first_row = batch.position_ids[0].tolist()
    assert first_row == [0, 1, 2, 3, 4, 0, 1, 2]  # the 5-token and the 3-token example
    assert batch.num_tokens == 14
    assert [e.id for e in batch.examples] == ["0", "1", "2", "3"]


def test_padded_batches_pad_right_with_a_mask():
    examples = [ds.Example("a", "en", (5, 6, 7), (-100, 6, 7)), ds.Example("b", "en", (5, 6), (-100, 6))]
    (batch,) = ds.micro_batches(examples, 2, pad_id=0, packing=False, row_tokens=8, group_by_length=False)
    assert batch.input_ids.tolist() == [[5, 6, 7], [5, 6, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch.labels[1].tolist() == [-100, 6, -100]
    assert torch.equal(batch.example_index, torch.tensor([[0, 0, 0], [1, 1, -1]]))


def test_global_batches_cover_each_epoch_once():
    langs = np.array(["en"] * 10)
    schedule = list(ds.global_batches(langs, batch_size=4, temperature=1.0, seed=3, start_step=0, total_steps=6))
    first_epoch = [int(i) for _, batch in schedule[:3] for i in batch]
    assert sorted(first_epoch) == list(range(10)) and [len(b) for _, b in schedule[:3]] == [4, 4, 2]
    resumed = list(ds.global_batches(langs, 4, 1.0, 3, start_step=4, total_steps=6))
    assert [(step, list(batch)) for step, batch in resumed] == [(step, list(batch)) for step, batch in schedule[4:]]


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_chunked_cross_entropy_matches_full_logits(softcap, monkeypatch):
    from bactrian.train import loss as loss_module

    monkeypatch.setattr(loss_module, "LOGIT_BUDGET", 50 * 7)  # 7 tokens per chunk, several chunks
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
    hidden = torch.randn(23, 16, dtype=torch.float64, requires_grad=True)
    head.double()
    targets = torch.randint(0, 50, (23,))
    weights = torch.rand(23, dtype=torch.float64)
    fused = loss_module.linear_cross_entropy(hidden, head, targets, softcap)
    (fused * weights).sum().backward()
    fused_grad = hidden.grad.clone()
    hidden.grad = None
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    reference = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    (reference * weights).sum().backward()
    assert torch.allclose(fused.double(), reference, atol=1e-6)
    assert torch.allclose(fused_grad, hidden.grad, atol=1e-6)
    head.weight.requires_grad_(True)  # a trainable head takes the checkpointed path, same numbers
    assert torch.allclose(loss_module.linear_cross_entropy(hidden, head, targets, softcap).double(), reference)
