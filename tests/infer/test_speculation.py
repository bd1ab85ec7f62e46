"""Prompt lookup decoding (`--speculation prompt_lookup`, the default): a lone greedy row guesses its next tokens
from its own context and one forward checks them; its answer is plain decoding's token for token (every stop, the
token budget, EOS), guesses really are taken, and rows that share a batch, sample or carry a language guard do not
guess."""

import pytest

from bactrian.infer import decoding
from bactrian.infer.engine import Engine
from bactrian.infer.requests import LanguageGuard, Request
from bactrian.infer.routing import BASE
from bactrian.infer.speculation import MOST_GUESSES, Drafter

from support import PROMPTS, greedy


def test_the_drafter_continues_the_latest_occurrence_of_the_longest_ngram():
    drafter = Drafter()
    context = [1, 2, 3, 9, 9, 1, 2, 3, 4, 5, 6, 7, 2, 3]
    assert drafter.propose(context, most=4) == [4, 5, 6, 7]  # [2, 3] last occurred before 4
    assert drafter.propose(context + [4], most=2) == [5, 6]  # [2, 3, 4] found: the index grew by one token
    assert drafter.propose(context[:6], most=4) == []  # a cut context is indexed anew: [9, 1] is new there
    assert Drafter().propose([7, 7, 7, 7], most=4) == [7, 7, 7, 7]  # a loop runs on past the present
    assert Drafter().propose([1, 2, 1, 2, 1], most=3) == [2, 1, 2]
    assert Drafter().propose([7, 7, 7, 7], most=0) == []


def test_the_drafter_guesses_more_while_it_is_right_and_less_when_it_is_not():
    drafter = Drafter()
    start = drafter.guesses
    drafter.taken(start, start)
    assert drafter.guesses == start + 2
    for _ in range(10):
        drafter.taken(drafter.guesses, drafter.guesses)
    assert drafter.guesses == MOST_GUESSES
    drafter.taken(MOST_GUESSES, 2)
    assert drafter.guesses == 3
    drafter.taken(3, 0)
    assert drafter.guesses == 1


@pytest.fixture()
def checks(monkeypatch):
    """(guessed, kept, rows in the batch) of every speculative step."""
    seen = []
    check = decoding.DecodeBatch._check

    def spy(self, guesses, logits, mask):
        before, rows = len(self.rows[0].tokens), len(self.rows)
        yield from check(self, guesses, logits, mask)
        seen.append((len(guesses), len(self.rows[0].tokens) - before, rows))

    monkeypatch.setattr(decoding.DecodeBatch, "_check", spy)
    return seen


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gemma"])
def pair(request, tiny_llama, tiny_gemma):
    """The same tiny model in fp32 with speculation and without."""
    path = str(tiny_llama if request.param == "tiny_llama" else tiny_gemma)
    return Engine(path, dtype="float32"), Engine(path, dtype="float32", speculation="off")


def test_greedy_answers_are_plain_decodings_token_for_token(pair, checks):
    fast, plain = pair
    assert fast.mode["speculation"] == "prompt_lookup" and plain.mode["speculation"] == "off"
    for prompt in PROMPTS:
        for budget in (1, 7, 60):
            request = greedy(fast, prompt, BASE, max_new_tokens=budget)
            assert fast.generate([request]) == plain.generate([request])
    assert sum(kept - 1 for _, kept, _ in checks) > 20  # guesses were taken: fewer forwards than tokens
    assert any(kept <= guessed for guessed, kept, _ in checks)  # and some refused


def test_stop_strings_end_the_answer_where_plain_decoding_does(pair, checks):
    fast, plain = pair
    for prompt in PROMPTS:
        answer = plain.generate([greedy(plain, prompt, BASE, max_new_tokens=60)])[0][0]
        stops = [answer[at:at + 2] for at in range(4, len(answer) - 2, 9) if "\ufffd" not in answer[at:at + 2]]
        for stop in stops:
            request = greedy(fast, prompt, BASE, max_new_tokens=60, stop=[stop])
            streamed = "".join(delta.text for delta in fast.stream([request]))
            assert streamed == plain.generate([request])[0][0] == answer[:answer.index(stop)]
    assert any(kept > 1 for _, kept, _ in checks)


def answer_tokens(engine, request: Request) -> list[int]:
    batch = decoding.DecodeBatch(engine)
    row = decoding.Row(request, 0, engine.device)
    batch.admit([row])
    while len(batch):
        list(batch.step())
    return row.tokens


def test_eos_inside_a_run_of_guesses_ends_the_answer(pair, checks, monkeypatch):
    fast, plain = pair
    request = greedy(fast, PROMPTS[1], BASE, max_new_tokens=40)
    tokens = answer_tokens(plain, request)
    eos = tokens[-1]  # a token the answer repeats, made the end token
    monkeypatch.setattr(Engine, "eos_token_ids", property(lambda self: {eos}))
    answer = fast.generate([request])
    assert answer == plain.generate([request]) and answer[0][1] == "stop"
    assert answer_tokens(fast, request) == tokens[:tokens.index(eos)]


def test_shared_sampled_and_guarded_rows_do_not_guess(pair, checks):
    fast, _ = pair
    fast.generate([greedy(fast, prompt, BASE, max_new_tokens=30) for prompt in PROMPTS])
    assert all(rows == 1 for _, _, rows in checks)  # a row guesses only once it decodes alone
    guessed = len(checks)
    fast.generate([greedy(fast, PROMPTS[0], BASE, max_new_tokens=30, temperature=0.8, seed=1)])
    guarded = greedy(fast, PROMPTS[0], BASE, max_new_tokens=30)
    guarded.guard = LanguageGuard("en")
    fast.generate([guarded])
    assert len(checks) == guessed


def test_a_lone_rows_cache_holds_only_what_it_kept(pair, monkeypatch):
    """After each speculative step the cache, mask and positions are those of the kept tokens: a second row
    joining later gets what it gets alone."""
    fast, plain = pair
    late = greedy(fast, PROMPTS[2], BASE, max_new_tokens=10)
    first = greedy(fast, PROMPTS[3], BASE, max_new_tokens=50)
    joined = iter([first, late])
    texts = ["", ""]
    for delta in fast.stream(joined, max_rows=1):
        texts[delta.index] += delta.text
    assert texts == [plain.generate([first])[0][0], plain.generate([late])[0][0]]
    batch = decoding.DecodeBatch(fast)
    batch.admit([decoding.Row(first, 0, fast.device)])
    while batch.rows or batch.waiting or batch.prefill:
        list(batch.step())
        if batch.rows:
            row = batch.rows[0]
            held = len(row.context())
            assert batch.cache.get_seq_length() == batch.mask.shape[1] == held - 1 + int(batch.mask[0].eq(0).sum())
            assert int(batch.positions[0, 0]) == held - 1


def test_on_by_default_and_off_by_option(pair, checks):
    from bactrian.infer.config import ServeConfig

    assert ServeConfig().speculation == "prompt_lookup"
    _, plain = pair
    plain.generate([greedy(plain, prompt, BASE, max_new_tokens=30) for prompt in PROMPTS])
    assert not checks


def test_serve_counts_guesses_and_reports_the_mode(pair):
    import httpx
    import openai
    from prometheus_client.parser import text_string_to_metric_families

    from bactrian.infer.server import engine_app

    from support import LiveServer

    def serve(engine):
        with LiveServer(engine_app(engine, api_key="k")) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
            reply = client.completions.create(model="base", prompt=PROMPTS[3], max_tokens=40, temperature=0)
            health = httpx.get(f"{url}/health", headers={"Authorization": "Bearer k"}).json()
            text = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer k"}).text
        counted = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name.startswith("bactrian_speculation")}
        return reply.choices[0].text, health["decoding"]["speculation"], counted

    fast_text, fast_mode, fast_counts = serve(pair[0])
    plain_text, plain_mode, plain_counts = serve(pair[1])
    assert fast_text == plain_text and (fast_mode, plain_mode) == ("prompt_lookup", "off")
    guessed, kept = (fast_counts[f"bactrian_speculation_{name}_tokens_total"] for name in ("guessed", "kept"))
    assert guessed >= kept > 0
    assert plain_counts["bactrian_speculation_guessed_tokens_total"] == 0


def test_no_guessing_where_a_checked_guess_could_change_the_answer(tiny_llama, checks):
    engine = Engine(str(tiny_llama), dtype="bfloat16")
    assert not engine.speculation and engine.mode["speculation"] == "off"
    engine.generate([greedy(engine, PROMPTS[0], BASE, max_new_tokens=30)])
    assert not checks


def test_a_step_whose_guesses_do_not_fit_decodes_plainly(pair, checks, monkeypatch):
    """An out-of-memory in a speculative step fails nothing: the step is taken again without guesses, and the row
    guesses no more."""
    import torch

    fast, plain = pair
    forward, refused = fast.forward, []

    def tight(ids, mask, positions, cache, adapters, keep=1):
        if keep > 1:
            refused.append(keep)
            first = cache.layers[0]  # fail half way: the first layer has grown its cache already
            first.keys, first.values = (torch.cat([t, t[:, :, -keep:]], dim=2) for t in (first.keys, first.values))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(ids, mask, positions, cache, adapters, keep)

    monkeypatch.setattr(fast, "forward", tight)
    request = greedy(fast, PROMPTS[3], BASE, max_new_tokens=40)
    assert fast.generate([request]) == plain.generate([request])
    assert len(refused) == 1 and not checks
