"""The language guard in `bactrian serve`: asked for per request (`bactrian.language_guard`) or by the server, its
report in the response, /metrics, and the pair log of corrected answers, with the official openai client over
loopback on a tiny adapter that drifts into English when asked in French (support.make_drifting_adapter)."""

import concurrent.futures
import contextlib
import json
import logging
import subprocess
import sys

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bactrian.errors import ConfigError
from bactrian.infer.config import ServeConfig
from bactrian.infer.guard_pairs import PairLog
from bactrian.infer.server import GuardPolicy, create_app, engine_app, guard_policy_of
from bactrian.infer.upstream import Upstream
from bactrian.records import load_records

from support import DRIFT_ENGLISH, DRIFT_FRENCH, DRIFT_PROMPT, PROMPTS, LiveServer

KEY = "sk-guard-key"
ASK = [{"role": "user", "content": DRIFT_PROMPT}]
GUARDED = {"bactrian": {"language_guard": True}}
REJECTED = DRIFT_ENGLISH.split("\n")[0] + "\n" + DRIFT_FRENCH.split("\n")[1]  # the first line drifted, was fixed


@contextlib.contextmanager
def serving(engine, **options):
    """A server of its own (its own counters) on `engine`: yields an openai client and the server's address."""
    with LiveServer(engine_app(engine, api_key=KEY, **options)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0), url


@pytest.fixture(scope="module")
def server(drifting_engine):
    with serving(drifting_engine) as pair:
        yield pair


@pytest.fixture()
def client(server):
    return server[0]


def ask(client, **extra):
    return client.chat.completions.create(model="drift", messages=ASK, max_tokens=80, temperature=0, **extra)


def metric_samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_guarded_request_gets_the_french_answer_and_the_report(client):
    reply = ask(client, extra_body=GUARDED)
    assert reply.choices[0].message.content == DRIFT_FRENCH and reply.choices[0].finish_reason == "stop"
    report = reply.model_extra["bactrian"]["guard"]
    # judged: the drifting first line, its retry, the second line
    assert (report["lang"], report["checked"], report["retried"], report["unfixed"]) == ("fr", 3, 1, 0)
    assert report["corrections"][0]["drifted"] == DRIFT_ENGLISH.split("\n")[0]
    assert "route" not in reply.model_extra["bactrian"]  # the model was named, not routed


def test_an_unguarded_request_gets_the_english_drift_and_no_report(client):
    for extra in ({}, {"extra_body": {"bactrian": {"language_guard": False}}}):
        reply = ask(client, **extra)
        assert reply.choices[0].message.content == DRIFT_ENGLISH
        assert "bactrian" not in (reply.model_extra or {})


def test_the_language_named_wins_and_none_told_means_no_guard(client):
    reply = ask(client, extra_body={"bactrian": {"language_guard": True, "lang": "en"}})
    assert reply.choices[0].message.content == DRIFT_ENGLISH  # in English, nothing drifts
    assert reply.model_extra["bactrian"]["guard"]["retried"] == 0
    unknown = client.chat.completions.create(model="drift", messages=[{"role": "user", "content": "ok"}],
                                             max_tokens=8, temperature=0, extra_body=GUARDED)
    assert unknown.model_extra["bactrian"]["guard"] == {"lang": None, "skipped": "language not detected"}


def test_a_stream_has_the_same_text_and_its_last_chunk_the_report(client):
    whole = ask(client, extra_body=GUARDED)
    chunks = list(ask(client, extra_body=GUARDED, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.model_extra["bactrian"]["guard"] == whole.model_extra["bactrian"]["guard"]
    assert all("bactrian" not in (c.model_extra or {}) for c in chunks[:-1])


def test_a_completion_is_guarded_in_the_language_it_names(client, drifting_engine):
    prompt = drifting_engine.catalog.template_for("drift").render(DRIFT_PROMPT, "", drifting_engine.tokenizer)
    plain = client.completions.create(model="drift", prompt=prompt, max_tokens=80, temperature=0)
    guarded = client.completions.create(model="drift", prompt=prompt, max_tokens=80, temperature=0,
                                        extra_body={"bactrian": {"language_guard": True, "lang": "fr"}})
    assert plain.choices[0].text == DRIFT_ENGLISH and guarded.choices[0].text == DRIFT_FRENCH
    assert guarded.model_extra["bactrian"]["guard"]["retried"] == 1
    streamed = list(client.completions.create(model="drift", prompt=prompt, max_tokens=80, temperature=0,
                                              stream=True, extra_body={"bactrian": {"language_guard": True,
                                                                                    "lang": "fr"}}))
    assert "".join(c.choices[0].text for c in streamed) == DRIFT_FRENCH
    assert streamed[-1].model_extra["bactrian"]["guard"]["lang"] == "fr"


@pytest.mark.parametrize("fields, says", [
    ({"language_guard": True, "strict": True}, "bactrian.strict"),
    ({"language_guard": "yes"}, "bactrian.language_guard"),
    ({"lang": "xx"}, "'xx' is not one of the 52 languages; use a code among: af, ar,"),
    ({"lang": "French"}, "not one of the 52 languages"),
    ({"lang": "f" * 5000}, "bactrian.lang"),
    ({"max_retries": 9}, "bactrian.max_retries"),
    ({"max_retries": -1}, "bactrian.max_retries"),
    ({"max_retries": 1.5}, "bactrian.max_retries"),
    ("on", "bactrian"),
])
def test_invalid_bactrian_fields_are_400s(server, fields, says):
    url = server[1]
    for path, body in (("chat/completions", {"messages": ASK}), ("completions", {"prompt": DRIFT_PROMPT})):
        response = httpx.post(f"{url}/v1/{path}", json={"model": "drift", **body, "bactrian": fields},
                              headers={"Authorization": f"Bearer {KEY}"})
        assert response.status_code == 400, path
        assert says in response.json()["error"]["message"]


def test_the_server_default_and_its_retries(drifting_engine):
    with serving(drifting_engine, guard=GuardPolicy(on=True, retries=0)) as (client, url):
        kept = ask(client)  # guarded by default, but no retry allowed: the drift is kept and marked
        assert kept.choices[0].message.content == DRIFT_ENGLISH
        assert kept.model_extra["bactrian"]["guard"]["unfixed"] == 2
        fixed = ask(client, extra_body={"bactrian": {"max_retries": 2}})
        assert fixed.choices[0].message.content == DRIFT_FRENCH
        assert "bactrian" not in (ask(client, extra_body={"bactrian": {"language_guard": False}}).model_extra or {})
        health = httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert health["language_guard"] == "on" and "decoding" in health
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}  # without the key: the status only


def test_health_says_the_guard_is_off_by_default(server):
    assert httpx.get(f"{server[1]}/health", headers={"Authorization": f"Bearer {KEY}"}).json()["language_guard"] \
        == "off"


def test_metrics_count_answers_and_what_the_guard_did(drifting_engine):
    with serving(drifting_engine) as (client, url):
        assert httpx.get(f"{url}/metrics").status_code == 401
        tokens = [ask(client, extra_body=GUARDED).usage.completion_tokens for _ in range(2)]
        streamed = list(ask(client, extra_body=GUARDED, stream=True, stream_options={"include_usage": True}))
        tokens += [streamed[-1].usage.completion_tokens, ask(client).usage.completion_tokens]
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "ok"}], max_tokens=3,
                                       temperature=0, extra_body=GUARDED)
        response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        samples = metric_samples(url)
    fr, none = (("adapter", "drift"), ("lang", "fr")), (("adapter", "base"), ("lang", "none"))
    assert samples[("bactrian_guard_answers_total", fr)] == 3
    assert samples[("bactrian_guard_answers_total", none)] == 1  # asked for, no language told: not guarded
    assert samples[("bactrian_guard_pieces_checked_total", fr)] == 9
    assert samples[("bactrian_guard_pieces_retried_total", fr)] == 3
    assert samples[("bactrian_guard_retries_total", fr)] == 3
    assert samples[("bactrian_guard_pieces_unfixed_total", fr)] == 0
    assert samples[("bactrian_requests_total", (("adapter", "drift"), ("finish_reason", "stop")))] == 4
    assert sum(value for (name, labels), value in samples.items()
               if name == "bactrian_requests_total" and ("adapter", "base") in labels) == 1
    assert samples[("bactrian_completion_tokens_total", (("adapter", "drift"),))] == sum(tokens)


def test_metrics_count_the_requests_a_proxy_forwards(drifting_engine, server):
    upstream_url = server[1]
    app = create_app(drifting_engine.catalog, Upstream(f"{upstream_url}/v1", KEY), api_key=KEY)
    with LiveServer(app) as url:
        proxy = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        reply = ask(proxy, extra_body=GUARDED)
        samples = metric_samples(url)
    assert reply.choices[0].message.content == DRIFT_ENGLISH  # the upstream decodes, unguarded
    assert reply.model_extra["bactrian"]["guard"] == {"lang": "fr",
                                                      "skipped": "this server's backend does not guard answers"}
    assert samples[("bactrian_requests_total", (("adapter", "drift"), ("finish_reason", "stop")))] == 1
    assert samples[("bactrian_completion_tokens_total", (("adapter", "drift"),))] == reply.usage.completion_tokens


def test_each_corrected_answer_is_one_preference_row(drifting_engine, tmp_path, caplog):
    pairs = tmp_path / "pairs.jsonl"
    caplog.set_level(logging.INFO, logger="bactrian.infer.server")
    with serving(drifting_engine, pairs=PairLog(pairs), max_batch=8) as (client, _):
        ask(client)  # unguarded: nothing corrected, nothing kept
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: ask(client, extra_body=GUARDED), range(8)))
        list(ask(client, extra_body=GUARDED, stream=True))
    assert all(reply.choices[0].message.content == DRIFT_FRENCH for reply in replies)
    lines = pairs.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 9
    rows = [json.loads(line) for line in lines]
    assert {(r["instruction"], r["input"], r["chosen"], r["rejected"], r["lang"], r["kind"], r["adapter"])
            for r in rows} == {(DRIFT_PROMPT, "", DRIFT_FRENCH, REJECTED, "fr", "language_guard", "drift")}
    assert len({r["id"] for r in rows}) == 9 and all(r["created"] for r in rows)
    records = load_records(str(pairs))  # as `finetune --method dpo|orpo` reads them
    assert len(records) == 9 and {(r.output, r.rejected, r.lang) for r in records} == {(DRIFT_FRENCH, REJECTED, "fr")}
    corrected = [r for r in caplog.records if r.getMessage().startswith("Language guard (fr, model drift)")]
    assert len(corrected) == 9 and all(r.levelno == logging.INFO for r in corrected)


def test_a_pair_that_cannot_be_written_never_fails_the_request(drifting_engine, tmp_path, caplog):
    pairs = tmp_path / "pairs.jsonl"
    log = PairLog(pairs)
    pairs.unlink()
    pairs.mkdir()  # now a folder: appending fails
    with serving(drifting_engine, pairs=log) as (client, _):
        assert ask(client, extra_body=GUARDED).choices[0].message.content == DRIFT_FRENCH
    assert "Could not append a language-guard pair" in caplog.text


def test_a_guarded_request_changes_no_other_request_of_its_batch(drifting_engine):
    def plain(client, question):
        return client.chat.completions.create(model="base", messages=[{"role": "user", "content": question}],
                                              max_tokens=24, temperature=0).choices[0].message.content

    with serving(drifting_engine, wait_ms=200) as (client, _):
        alone = [plain(client, question) for question in PROMPTS]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            guarded = [pool.submit(ask, client, extra_body=GUARDED) for _ in range(4)]
            together = list(pool.map(lambda question: plain(client, question), PROMPTS))
        assert all(job.result().choices[0].message.content == DRIFT_FRENCH for job in guarded)
    assert together == alone


APPEND_MANY = """
import sys
from bactrian.infer.guard_pairs import PairLog
log, writer = PairLog(sys.argv[1]), int(sys.argv[2])
for row in range(20):
    assert log.append({"writer": writer, "row": row, "text": f"{writer}-{row} " * 20_000})  # lines of ~100 KB
"""


def test_appends_from_several_processes_never_interleave(tmp_path):
    path = tmp_path / "pairs.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", APPEND_MANY, str(path), str(writer)]) for writer in range(4)]
    assert [writer.wait(60) for writer in writers] == [0] * 4
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((r["writer"], r["row"]) for r in rows) == [(w, r) for w in range(4) for r in range(20)]
    assert all(r["text"] == f"{r['writer']}-{r['row']} " * 20_000 for r in rows)


def test_the_options_are_checked_at_start(tmp_path):
    with pytest.raises(ConfigError, match="--guard_retries 9"):
        guard_policy_of(ServeConfig(guard_retries=9))
    with pytest.raises(ConfigError, match="--language_guard"):
        guard_policy_of(ServeConfig(language_guard=True, upstream="http://127.0.0.1:1/v1"))
    assert guard_policy_of(ServeConfig(language_guard=True, guard_retries=3)) == GuardPolicy(True, 3)
    with pytest.raises(ConfigError, match="--guard_pairs_file"):
        PairLog(tmp_path / "missing" / "pairs.jsonl")


def test_the_scripts_of_the_tokens_are_known_before_the_first_request(tiny_llama):
    """They are computed when the app is made, not inside a decode step that every row would wait on."""
    from bactrian.infer.engine import Engine
    from bactrian.infer.guard import token_scripts

    engine = Engine(str(tiny_llama), dtype="float32")
    token_scripts.cache_clear()
    engine_app(engine)
    before = token_scripts.cache_info()
    token_scripts(engine.tokenizer)
    assert before.currsize == 1 and token_scripts.cache_info().hits == before.hits + 1
