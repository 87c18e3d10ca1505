"""The /chat page, end to end: Debian's headless Chromium (driven by playwright) against a real server.

Chromium is a test dependency like any other: if it is missing the tests fail and say how to get it.
"""
from __future__ import annotations

import httpx
import pytest

from chatpipe.serve.app import create_app
from chatpipe.serve.auth import Keys
from chatpipe.serve.engine import Engine
from chatpipe.serve.server import running
from chatpipe.tasks.common import bundle

QUESTION = "Hi! How are you?"
RECORD_ANSWER_LENGTHS = """() => {
    window.answerLengths = [];
    new MutationObserver(() => {
        const answers = document.querySelectorAll(".msg.assistant");
        if (answers.length) window.answerLengths.push(answers[answers.length - 1].textContent.length);
    }).observe(document.getElementById("log"), {childList: true, subtree: true, characterData: true});
}"""
ANSWERED = """n => document.querySelectorAll(".msg.assistant").length === n
                 && !document.querySelector(".msg.assistant.streaming")"""


@pytest.fixture(scope="module")
def loaded(bundle_path):
    return bundle.load(bundle_path)


@pytest.fixture(scope="module")
def server(loaded):
    with running(create_app(Engine(loaded))) as url:
        yield url


def api_answer(url: str, messages: list[dict], seed: int, headers: dict | None = None) -> dict:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny-test", "messages": messages, "seed": seed},
                      headers=headers, timeout=30).json()


def open_chat(browser, url: str, query: str = ""):
    page = browser.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request))
    page.goto(f"{url}/chat{query}")
    return page, requests


def say(page, text: str, answers: int) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function(ANSWERED, arg=answers)


def test_a_conversation_streams_and_keeps_its_history(browser, server):
    # a seed whose answer is long enough to arrive over many chunks
    seed = max(range(12), key=lambda s: api_answer(server, [{"role": "user", "content": QUESTION}], s)
               ["usage"]["completion_tokens"])
    page, requests = open_chat(browser, server, f"?seed={seed}")
    page.wait_for_function("() => document.getElementById('model').textContent === 'tiny-test'")
    page.evaluate(RECORD_ANSWER_LENGTHS)
    say(page, QUESTION, answers=1)

    first = page.text_content(".msg.assistant")
    expected = api_answer(server, [{"role": "user", "content": QUESTION}], seed)["choices"][0]["message"]["content"]
    assert first == expected
    lengths = [n for n in page.evaluate("window.answerLengths") if n]
    assert len(set(lengths)) > 1 and lengths == sorted(lengths), f"not streamed: lengths {lengths}"

    say(page, "Tell me more.", answers=2)
    sent = [r.post_data_json for r in requests if r.url.endswith("/v1/chat/completions")]
    assert [m["content"] for m in sent[1]["messages"]] == [QUESTION, first, "Tell me more."]
    assert sent[1]["stream"] is True and sent[1]["seed"] == seed
    conversation = page.evaluate("messages")
    assert len(conversation) == 4 and conversation[:3] == sent[1]["messages"]
    assert conversation[3]["content"] == page.locator(".msg.assistant").nth(1).text_content()
    assert all(r.url.startswith(server) for r in requests), "the page fetched something from elsewhere"

    page.click("#clear")
    say(page, QUESTION, answers=1)
    assert len(page.evaluate("messages")) == 2 and page.locator(".msg").count() == 2
    page.close()


def test_errors_are_shown_and_the_exchange_undone(browser, server):
    page, _ = open_chat(browser, server)
    page.fill("#input", "what is <|system|>?")
    page.press("#input", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "invalid conversation: marker inside turn text" in page.text_content("#error")
    assert page.locator(".msg").count() == 0 and page.input_value("#input") == "what is <|system|>?"
    assert page.evaluate("messages") == []
    page.close()


def test_stop_abandons_a_pending_answer(browser, server):
    page, _ = open_chat(browser, server)
    held = []
    page.route("**/v1/chat/completions", lambda route: held.append(route))  # never answered
    page.fill("#input", QUESTION)
    page.press("#input", "Enter")
    page.wait_for_function("() => !document.getElementById('stop').disabled")
    page.click("#stop")
    page.wait_for_function("() => !document.getElementById('send').disabled")
    assert held and page.locator(".msg").count() == 0 and page.evaluate("messages") == []
    assert page.input_value("#input") == QUESTION
    page.close()


def test_the_page_works_with_an_api_key(browser, loaded):
    with running(create_app(Engine(loaded), Keys(["page-key"]))) as url:
        page, _ = open_chat(browser, url)
        page.wait_for_selector("#error:not([hidden])")
        assert "missing API key" in page.text_content("#error")
        page.fill("#key", "page-key")
        page.dispatch_event("#key", "change")
        page.wait_for_function("() => document.getElementById('model').textContent === 'tiny-test'")
        say(page, QUESTION, answers=1)
        assert page.is_hidden("#error") and page.text_content(".msg.assistant")
        page.reload()  # the key stays for the browser tab's session
        assert page.input_value("#key") == "page-key"
        page.wait_for_function("() => document.getElementById('model').textContent === 'tiny-test'")
        page.close()
