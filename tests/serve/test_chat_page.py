"""The chat page in headless Chromium (Playwright driving the system browser): type, send, watch the reply
stream in token by token, and end as the engine's greedy answer; the stop button aborts a reply."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from scratchlm.serve.chat_format import format_chat
from tests.serve.conftest import expected_text, missing, require, running, slow_down

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p), None)


@pytest.fixture
def browser_page():
    if CHROMIUM is None:
        missing("no chromium on PATH: apt-get install -y chromium (Debian) or set CHROMIUM=/path/to/chrome")
    sync_api = require("playwright.sync_api", "pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_reply_streams_in_and_matches_the_engine(browser_page, make_app, tiny_run):
    _, model, tok = tiny_run
    app = make_app(max_batch=2, sync_every=1)
    slow_down(app, 0.03)  # one token per 30 ms at least: several observations while it streams
    text, stop = format_chat([{"role": "user", "content": "Tell me about the dog."}])
    expected = expected_text(model, tok, text, 40, stop).lstrip()  # the page drops the template's leading space
    page = browser_page
    with running(app) as url:
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "40")
        page.fill("#input", "Tell me about the dog.")
        page.click("#send")
        seen, deadline = [], time.monotonic() + 30
        while page.is_disabled("#send") and time.monotonic() < deadline:  # the send button is off while streaming
            seen.append(page.text_content(".message.assistant"))
            time.sleep(0.02)
        final = page.text_content(".message.assistant")
        assert page.text_content(".message.user") == "Tell me about the dog."
        assert final == expected
        growing = [s for i, s in enumerate(seen) if s and (i == 0 or s != seen[i - 1])]
        assert len(growing) >= 2 and all(expected.startswith(s) for s in growing)  # it grew while streaming

        # the stop button aborts a reply: the page stops at a prefix, and the server frees the slot
        page.fill("#max-tokens", "30")
        page.fill("#input", "Again?")
        page.click("#send")
        page.wait_for_function("!document.getElementById('stop').disabled")
        time.sleep(0.3)
        page.click("#stop")
        page.wait_for_function("!document.getElementById('send').disabled")
        history = [{"role": "user", "content": "Tell me about the dog."}, {"role": "assistant", "content": expected.strip()},
                   {"role": "user", "content": "Again?"}]
        full = expected_text(model, tok, format_chat(history)[0], 30, stop).lstrip()
        partial = page.locator(".message.assistant").nth(1).text_content()
        assert full.startswith(partial) and len(partial) < len(full)
        health = page.request.get(f"{url}/health").json()
        deadline = time.monotonic() + 5
        while health["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
            health = page.request.get(f"{url}/health").json()
        assert health["in_flight"] == 0
