"""The chat page of `gptpipe serve` in headless Chromium (Debian's, driven by playwright; no browser
download): type a question, press Send, and the streamed answer appears in the page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from test_serve import NAME, base_url, expected, model, one_thread  # noqa: F401  (fixtures)
from gptpipe.evaluation.chat import Conversation
from gptpipe.evaluation.generate import prompt_seed

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")


def test_a_typed_question_gets_generates_answer_in_the_page(base_url, model):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(base_url)
        page.fill("#message", "What is 2 + 2?")
        page.click("#send")
        answer = page.wait_for_selector("p.assistant[data-done]", timeout=30_000)
        shown = answer.text_content()
        asked = page.text_content("p.user")
        browser.close()
    assert asked == "you: What is 2 + 2?"
    want = expected(model, Conversation().prompt_for("What is 2 + 2?"), prompt_seed(0, "0"))
    assert want and shown == want
