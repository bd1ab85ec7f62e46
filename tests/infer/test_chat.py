"""`bactrian chat`: the Gradio app through gradio_client, and in a real browser (headless Chromium)."""

import shutil
from pathlib import Path

import pytest

from bactrian.infer.batcher import Batcher
from bactrian.infer.chat import build_app
from bactrian.infer.requests import Request, SamplingParams

from support import free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def batcher(engine):
    return Batcher(engine)


@pytest.fixture(scope="module")
def url(engine, batcher):
    app = build_app(engine, batcher)
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def expected(engine, adapter, instruction, beams=1, max_tokens=12):
    request = Request(engine.catalog.render(adapter, instruction), SamplingParams(max_new_tokens=max_tokens,
                                                                          num_beams=beams), adapter)
    return engine.generate([request])[0][0]


def test_answer_through_gradio_client(url, engine):
    from gradio_client import Client

    client = Client(url, verbose=False)
    text, note = client.predict("Nenne eine Farbe.", "", 0, 0.75, 40, 1, 12, False, "de", False, api_name="/answer")
    assert text == expected(engine, "de", "Nenne eine Farbe.")
    assert note == "Answered by: de"
    text, note = client.predict("Bonjour, pouvez-vous me dire quelle heure il est maintenant ?", "", 0, 0.75, 40,
                                2, 8, True, "auto", False, api_name="/answer")
    assert note.startswith("Answered by: fr (detected language: fr (")
    assert note.endswith(", detected); the only adapter covering fr)")
    assert text == expected(engine, "fr", "Bonjour, pouvez-vous me dire quelle heure il est maintenant ?", 2, 8)


def test_multi_turn_chat_through_gradio_client(url):
    from gradio_client import Client

    client = Client(url, verbose=False)
    history, cleared, note = client.predict("Hello", [], "base", 0, 6, False, api_name="/chat")
    assert cleared == "" and note == "Answered by: base"
    assert [m["role"] for m in history] == ["user", "assistant"]
    history, _, _ = client.predict("And then?", history, "base", 0, 6, False, api_name="/chat")
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]


def test_several_people_chatting_are_decoded_together(url, engine, batcher):
    """Gradio does not queue the page's events one by one: concurrent users share the batcher's batch."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    questions = [f"Question {i}: name a colour." for i in range(6)]
    jobs = [client.submit(question, "", 0, 0.75, 40, 1, 60, False, "fr", False, api_name="/answer")
            for question in questions]
    answers = [job.result(timeout=120)[0] for job in jobs]
    assert answers == [expected(engine, "fr", question, max_tokens=60) for question in questions]
    assert batcher.most_rows >= 2


def test_the_language_guard_on_the_page(drifting_engine):
    """The page's guard keeps the drifting adapter's answer in French and says what it did, in both tabs."""
    from gradio_client import Client

    from support import DRIFT_FRENCH, DRIFT_PROMPT

    app = build_app(drifting_engine, language_guard=True)
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        text, note = client.predict(DRIFT_PROMPT, "", 0, 0.75, 40, 1, 80, True, "drift", True, api_name="/answer")
        assert text == DRIFT_FRENCH
        assert note.endswith("Language guard (fr): 3 pieces checked, 1 decoded again, 0 still in another language.")
        text, _ = client.predict(DRIFT_PROMPT, "", 0, 0.75, 40, 1, 80, True, "drift", False, api_name="/answer")
        assert text != DRIFT_FRENCH  # unchecked, it drifts
    finally:
        app.close()


@pytest.mark.skipif(not shutil.which("chromium") or not shutil.which("chromedriver"),
                    reason="Debian's chromium and chromium-driver are not installed")
def test_question_typed_in_a_real_browser(url, engine):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#instruction textarea"))
        box.send_keys("Name a primary colour.")
        assert not driver.find_elements(By.CSS_SELECTOR, "#beams_note p")  # the page samples by default
        driver.find_element(By.CSS_SELECTOR, "#original").click()  # the original's settings: Beams 4
        wait.until(lambda d: "no effect" in d.find_element(By.CSS_SELECTOR, "#beams_note").text)
        driver.find_element(By.CSS_SELECTOR, "#submit").click()
        # adapter auto (English -> base model), Beams 4, Max tokens 128
        answer = expected(engine, "base", "Name a primary colour.", beams=4, max_tokens=128)
        wait.until(lambda d: "Answered by" in d.find_element(By.CSS_SELECTOR, "#routed").text)
        shown = driver.find_element(By.CSS_SELECTOR, "#output textarea").get_attribute("value")
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "chat.png"))
        assert shown == answer
        assert "detected language: en" in driver.find_element(By.CSS_SELECTOR, "#routed").text
    finally:
        driver.quit()
