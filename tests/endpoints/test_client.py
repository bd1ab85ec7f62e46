"""The endpoint client on long jobs: no key in logs, the cache, outputs or errors; a refused key stops the job
with the endpoint's message and keeps what was done; Retry-After values are clamped."""

import logging
import time

import pytest

from bactrian.data.translate import TranslateConfig, translate
from bactrian.endpoints.client import RateLimits, retry_after_seconds
from bactrian.errors import BactrianError

from support import SECRET, LiveServer, flaky_google, write_jsonl


def test_no_key_in_logs_cache_outputs_or_errors(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    rows = [{"id": f"r{i}", "instruction": f"Sentence number {i}."} for i in range(3)]
    source = write_jsonl(tmp_path / "en.jsonl", rows)
    out = tmp_path / "out"
    with LiveServer(flaky_google([400, 200, 200])) as url:  # the first language fails for good (a 400)
        result = translate(TranslateConfig(input=str(source), lang=["de", "fr"], engine="google", api_key=SECRET,
                                           base_url=url, output_dir=str(out), concurrency=1))
    assert result["failed"] == 3 and sum(result["rows"].values()) == 3
    assert SECRET not in caplog.text
    for file in out.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file
    with LiveServer(flaky_google([401])) as url, pytest.raises(BactrianError) as refused:
        translate(TranslateConfig(input=str(source), lang=["it"], engine="google", api_key=SECRET, base_url=url,
                                  output_dir=str(tmp_path / "other")))
    assert SECRET not in str(refused.value) and "401" in str(refused.value)


def test_a_refused_key_mid_job_stops_it_with_the_endpoints_message_and_keeps_what_was_done(tmp_path):
    rows = [{"id": f"r{i}", "instruction": f"Sentence number {i}."} for i in range(4)]
    source = write_jsonl(tmp_path / "en.jsonl", rows)
    config = dict(input=str(source), lang=["de", "fr", "it", "es"], engine="google", api_key=SECRET,
                  output_dir=str(tmp_path / "out"), concurrency=1)
    answers = [200, 403, 200, 200]
    with LiveServer(flaky_google(answers)) as url:
        started = time.monotonic()
        with pytest.raises(BactrianError, match="refused the job.*403.*quota or key trouble"):
            translate(TranslateConfig(base_url=url, **config))
        assert time.monotonic() - started < 30  # stopped at once: no retries of a refusal
        answers.clear()
        result = translate(TranslateConfig(base_url=url, **config))
    assert result["usage"]["cached"] == 1 and result["usage"]["requests_sent"] == 3  # the first was kept
    assert result["rows"] == {"de": 4, "es": 4, "fr": 4, "it": 4}


@pytest.mark.parametrize("header, expected", [
    ("2", 2.0), ("-5", 0.0), ("1e9", 60.0), ("soon", None), ("nan", None), ("inf", None), ("", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after_values_are_clamped(header, expected):
    assert retry_after_seconds(header, RateLimits().max_delay) == expected


def test_retry_after_as_a_future_http_date():
    from email.utils import formatdate

    waited = retry_after_seconds(formatdate(time.time() + 30, usegmt=True), 60)
    assert 25 <= waited <= 31
