"""The language guard (infer/guard.py) in the decoding engine, on a tiny model whose adapter drifts into English
when asked in French (support.make_drifting_adapter)."""

import pytest
import torch

from bactrian.infer.guard import GuardedAnswer, ban, token_scripts
from bactrian.infer.guard_pairs import rejected_answer
from bactrian.infer.requests import LanguageGuard, Request, SamplingParams

from support import DRIFT_ENGLISH, DRIFT_FRENCH, DRIFT_PROMPT, PROMPTS, greedy

pytestmark = pytest.mark.dtype_sensitive  # token-for-token comparisons: fp32's


def _drift_request(engine, guard=None, **params):
    params = SamplingParams(max_new_tokens=params.pop("max_new_tokens", 80), **params)
    return Request(engine.catalog.render("drift", DRIFT_PROMPT), params, "drift", guard=guard)


def _answer(engine, request):
    deltas = list(engine.stream([request]))
    return "".join(d.text for d in deltas), deltas


def test_the_adapter_drifts_into_english_without_the_guard(drifting_engine):
    text, deltas = _answer(drifting_engine, _drift_request(drifting_engine))
    assert text == DRIFT_ENGLISH
    assert deltas[-1].guard is None


def test_the_guard_takes_the_drifting_line_back_and_answers_in_french(drifting_engine):
    text, deltas = _answer(drifting_engine, _drift_request(drifting_engine, LanguageGuard("fr")))
    assert text == DRIFT_FRENCH
    report = deltas[-1].guard
    assert (report["lang"], report["retried"], report["retries"], report["unfixed"]) == ("fr", 1, 1, 0)
    correction, = report["corrections"]
    assert correction["drifted"] == DRIFT_ENGLISH.split("\n")[0] and correction["drifted_lang"] == "en"
    assert correction["fixed"] and text.startswith(correction["text"])
    assert rejected_answer(text, report) == DRIFT_ENGLISH.split("\n")[0] + "\n" + DRIFT_FRENCH.split("\n")[1]


def test_a_stream_shows_only_pieces_that_passed(drifting_engine):
    _, deltas = _answer(drifting_engine, _drift_request(drifting_engine, LanguageGuard("fr")))
    assert all("weather" not in d.text for d in deltas)
    assert [d.text for d in deltas] == [line + "\n" for line in DRIFT_FRENCH.split("\n")[:-1]] + \
        [DRIFT_FRENCH.split("\n")[-1]]


def test_without_drift_the_guarded_answer_is_the_same_token_for_token(drifting_engine):
    plain = _answer(drifting_engine, _drift_request(drifting_engine))[1]
    guarded = _answer(drifting_engine, _drift_request(drifting_engine, LanguageGuard("en")))[1]
    assert "".join(d.text for d in guarded) == "".join(d.text for d in plain)
    assert guarded[-1].completion_tokens == plain[-1].completion_tokens
    assert guarded[-1].guard["retries"] == 0 and guarded[-1].guard["checked"] == 2


def test_the_bound_keeps_the_last_attempt_and_marks_it(drifting_engine):
    text, deltas = _answer(drifting_engine, _drift_request(drifting_engine, LanguageGuard("fr", max_retries=0)))
    assert text == DRIFT_ENGLISH
    report = deltas[-1].guard
    assert report["unfixed"] == 2 and report["retries"] == 0 and report["corrections"] == []
    assert rejected_answer(text, report) is None


def test_a_guarded_row_changes_no_other_row_of_its_batch(drifting_engine, engine):
    others = [greedy(drifting_engine, prompt, "base", max_new_tokens=24) for prompt in PROMPTS]
    alone = [_answer(drifting_engine, request)[0] for request in
             [greedy(drifting_engine, prompt, "base", max_new_tokens=24) for prompt in PROMPTS]]
    guarded = _drift_request(drifting_engine, LanguageGuard("fr"))
    texts = [text for text, _, _ in drifting_engine.generate([others[0], guarded, *others[1:]])]
    assert texts[1] == DRIFT_FRENCH
    assert [texts[0], *texts[2:]] == alone


def test_a_sampled_guarded_answer_follows_its_seed(drifting_engine):
    runs = [_answer(drifting_engine, _drift_request(drifting_engine, LanguageGuard("fr"), temperature=0.7, seed=3))
            for _ in range(2)]
    assert runs[0][0] == runs[1][0]


def test_a_stop_string_ends_the_guarded_answer(drifting_engine):
    text, deltas = _answer(drifting_engine, _drift_request(drifting_engine, LanguageGuard("fr"), stop=["ciel"]))
    assert text == "Le temps est chaud et le " and deltas[-1].finish_reason == "stop"


def test_pieces_are_sentences_of_five_words_or_lines():
    guard = GuardedAnswer(LanguageGuard("de"))
    text = ""
    for token, piece in enumerate(["Ja.", " Das", " ist", " ein", " Satz", " auf", " Deutsch.", " Und"]):
        text += piece
        guard.record(text)
        assert not guard.review(text, list(range(token + 1)), finished=False)
    assert text[:guard.kept_chars] == "Ja. Das ist ein Satz auf Deutsch."  # "Ja." alone is too short to judge


def test_a_drift_into_another_script_bans_that_script(drifting_engine):
    guard = GuardedAnswer(LanguageGuard("ru"))
    text = "This answer is written in English instead"
    guard.record(text)
    assert guard.review(text, [7], finished=False) is False  # no sentence end yet ...
    assert guard.review(text, [7], finished=True)  # ... the answer ends, drifting
    tokens, script = guard.bans(0)
    assert tokens == {7} and script == "Latn"
    tokenizer = drifting_engine.tokenizer
    logits = torch.zeros(len(tokenizer))
    ban(logits, tokenizer, tokens, script)
    scripts, names = token_scripts(tokenizer)
    latin = tokenizer.convert_tokens_to_ids("Le")
    assert logits[7] == float("-inf") and logits[latin] == float("-inf")
    assert logits[tokenizer.eos_token_id] == 0  # tokens without letters stay
    assert names[scripts[latin]] == "Latn"


def test_lines_of_a_fenced_code_block_pass_unjudged():
    guard = GuardedAnswer(LanguageGuard("fr"))
    text = ""
    pieces = ["Voici le code :\n", "```\n", "for item in the list print the item please\n", "```\n"]
    for token, piece in enumerate(pieces):
        text += piece
        guard.record(text)
        assert not guard.review(text, list(range(token + 1)), finished=False)
    assert guard.kept_chars == len(text) and guard.checked == 0
    text += "This line is English prose again, outside the code."
    guard.record(text)
    assert guard.review(text, list(range(len(pieces) + 1)), finished=True)
