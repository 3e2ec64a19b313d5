"""The real app on the real embedded model, driven in headless Chromium.

One app server (a subprocess running `app.py`, exactly as `make run` does) serves
every test in this module. Screenshots go to test-artifacts/ for a human to look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests import app_logs
from tests.conftest import ARTIFACTS, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)  # polling a server that is still loading the model
    raise TimeoutError(f"app did not serve {url} within {timeout} s")


@contextlib.contextmanager
def serving_app(data_dir: Path, *args: str, log: Path):
    """`app.py --data-dir data_dir --port <free> *args` in a subprocess: (url ending in /, process) once it
    serves, terminated on exit."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "app.py", "--data-dir", str(data_dir), "--port", str(port), *args],
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    app_logs.started(log)  # a test that fails while it serves shows its tail
    try:
        wait_until_serving(url, process, log)
        yield url, process
    finally:
        app_logs.stopped(log)
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def app_data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app-data")


@pytest.fixture(scope="module")
def app_url(app_data_dir, embedded_model_dir):
    data_dir = app_data_dir
    # reuse the session's converted embedded model instead of converting it again
    (data_dir / "cache").mkdir()
    os.symlink(embedded_model_dir.parent, data_dir / "cache" / "models")
    with serving_app(data_dir, log=data_dir / "app.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app_url)
    wait_until_loaded(page)
    yield page
    page.close()


def wait_until_loaded(page) -> None:
    """Until the Arena's page-load reply has landed (app.py arena_on_load: the progress line comes with the
    team's sampling settings). A test that set a slider before it arrived saw the reply put the slider back."""
    page.wait_for_function("() => (document.querySelector('#arena-progress')?.innerText || '').trim().length > 0",
                           timeout=60_000)


def bot_selector(pane: str) -> str:
    """The CSS selector of a chatbot pane's answers (gradio 6 marks them either way)."""
    return f"#{pane} .message.bot, #{pane} [data-testid='bot']"


def bot_text(page, pane: str) -> str:
    return page.eval_on_selector_all(bot_selector(pane), "els => els.map(e => e.innerText).join('\\n')")


def set_greedy(page, prefix: str) -> None:
    """Temperature 0 in the open sampling settings of `prefix` (chat, arena). In full-module runs the slider
    sometimes kept its old value after the box was filled: the page-load reply with the team's settings
    landing just after, which the fixtures now wait for (wait_until_loaded); the slider holds what the next
    event sends, so fill until it shows greedy."""
    for _ in range(5):
        page.fill(f"#{prefix}-temperature input[type=number]", "0")
        page.press(f"#{prefix}-temperature input[type=number]", "Tab")
        try:
            page.wait_for_function(f"() => document.querySelector('#{prefix}-temperature input[type=range]').value"
                                   " === '0'", timeout=3_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the {prefix} temperature slider never showed 0")


def assert_answers_read_clear_of_the_badges(page, panes) -> None:
    """An answer pane's messages scroll below its label badge ("Model A"), never under it, and the pane
    has no Clear button of its own (it would empty one side in the browser only: ui/page_style.py)."""
    for pane in panes:
        badge, messages = (page.locator(f"#{pane} {selector}").first.bounding_box()
                           for selector in ("label", ".bubble-wrap"))
        assert messages["y"] >= badge["y"] + badge["height"], (pane, badge, messages)
        assert page.locator(f'#{pane} button[aria-label="Clear"]').count() > 0  # gradio still renders it...
        assert not page.locator(f'#{pane} button[aria-label="Clear"]').first.is_visible()  # ...hidden


def semibold_letters_fall_back(page) -> bool:
    """Whether the page's semibold Source Sans Pro lacks lowercase letters (gradio's own 600 file is a 5 KB
    subset): a letter that falls back measures as wide as in the fallback font alone (monospace here)."""
    return page.evaluate("""async () => {
        await document.fonts.load('600 16px "Source Sans Pro"', 'ab');
        const context = document.createElement('canvas').getContext('2d');
        const width = font => { context.font = font; return context.measureText('abab').width; };
        return width('600 16px "Source Sans Pro", monospace') === width('600 16px monospace');
    }""")


def test_chat_streams_both_answers(page):
    page.get_by_role("tab", name="Chat").click()
    # greedy: at the default temperature (0.7, a fresh seed per message) the base model names Paris in
    # about 2 answers of 3 (measured over 50), so both sides missed it about once a run in nine
    page.get_by_text("Sampling settings (apply to both sides)").locator("visible=true").first.click()
    set_greedy(page, "chat")
    page.fill("#chat-input textarea", "What is the capital of France?")
    page.click("#chat-send")
    # both panes get text before generation ends: streaming, not one final chunk
    page.wait_for_function(
        "() => ['chat-left','chat-right'].every(id => "
        "[...document.querySelectorAll('#' + id + ' .message.bot, #' + id + ' [data-testid=bot]')]"
        ".some(e => e.innerText.trim().length > 0))",
        timeout=120_000,
    )
    page.wait_for_function("() => document.querySelector('#chat-stats').innerText.includes('tok/s')",
                           timeout=180_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)
    assert bot_text(page, "chat-left").strip() and bot_text(page, "chat-right").strip()
    assert "Paris" in bot_text(page, "chat-left") + bot_text(page, "chat-right")


def bot_messages(page, pane: str) -> list[str]:
    """One text per bot message (the two selectors of bot_text can match the same message twice)."""
    return page.evaluate(
        "pane => { const tagged = document.querySelectorAll('#' + pane + ' [data-testid=bot]');"
        " const els = tagged.length ? tagged : document.querySelectorAll('#' + pane + ' .message.bot');"
        " return [...els].map(e => e.innerText.trim()); }", pane)


def open_chat(page, max_new_tokens: int) -> None:
    """The Chat tab, with its answer budget set in the sampling settings."""
    page.get_by_role("tab", name="Chat").click()
    page.get_by_text("Sampling settings (apply to both sides)").locator("visible=true").first.click()
    page.fill("#chat-max-tokens input[type=number]", str(max_new_tokens))
    page.press("#chat-max-tokens input[type=number]", "Enter")


def test_chat_stop_keeps_the_partial_answer_and_the_chat_goes_on(page):
    open_chat(page, max_new_tokens=1024)
    page.fill("#chat-input textarea", "Tell me a very long story about a dragon and a lighthouse.")
    page.click("#chat-send")
    page.wait_for_function(  # some of the answer has streamed in
        "() => [...document.querySelectorAll('#chat-left .message.bot, #chat-left [data-testid=bot]')]"
        ".some(e => e.innerText.trim().length > 40)", timeout=120_000)
    page.click("#chat-stop")
    page.wait_for_function("() => document.querySelector('#chat-stats').innerText.includes('stopped')")
    stopped = bot_messages(page, "chat-left")
    assert len(stopped) == 1 and stopped[0]
    page.fill("#chat-max-tokens input[type=number]", "32")
    page.press("#chat-max-tokens input[type=number]", "Enter")
    page.fill("#chat-input textarea", "Now write a short poem about the sea.")
    page.click("#chat-send")
    page.wait_for_function("() => { const s = document.querySelector('#chat-stats').innerText;"
                           " return s.includes('tok/s') && !s.includes('stopped'); }", timeout=180_000)
    after = bot_messages(page, "chat-left")
    assert len(after) == 2 and after[0] == stopped[0]  # the stopped answer stays as it was
    assert len(after[0].split()) < 600  # cut short, far below the 1024-token budget
    # Regenerate samples anew (the seed is fresh per message unless one is set), in place of the last answer
    for _ in range(3):  # a click while the last turn's event is still closing is dropped by gradio: click again
        page.click("#chat-regenerate")
        try:  # a regeneration clears the stats line while it streams
            page.wait_for_function("() => !document.querySelector('#chat-stats').innerText.includes('tok/s')",
                                   timeout=5_000)
            break
        except PlaywrightTimeout:
            continue
    page.wait_for_function("() => document.querySelector('#chat-stats').innerText.includes('tok/s')", timeout=180_000)
    again = bot_messages(page, "chat-left")
    assert len(again) == 2 and again[0] == stopped[0] and again[1] != after[1], again
    assert_answers_read_clear_of_the_badges(page, ["chat-left", "chat-right"])


def test_arena_vote_lands_in_the_export(page, app_url, tmp_path):
    page.get_by_role("tab", name="Arena").click()
    page.fill("#arena-prompt textarea", "Name three primary colors.")
    assert page.is_disabled("#vote-a")  # nothing to vote on yet
    page.click("#arena-generate")
    page.wait_for_selector("#vote-a:not([disabled])", timeout=180_000)
    assert_answers_read_clear_of_the_badges(page, ["arena-a", "arena-b"])
    assert not semibold_letters_fall_back(page)  # "A is better" in one font, not two
    posted = []  # the vote's requests: off gradio's queue it is a POST to /gradio_api/run/..., answered in its reply
    page.on("request", lambda request: posted.append(request.url) if request.method == "POST" else None)
    page.keyboard.press("1")  # keyboard shortcut for "A is better"
    page.wait_for_function("() => document.querySelector('#arena-reveal').innerText.includes('Vote saved')",
                           timeout=60_000)
    assert posted and all("/gradio_api/run/" in url for url in posted), posted
    assert page.is_disabled("#vote-a")  # one vote per comparison
    reveal = page.inner_text("#arena-reveal")
    assert "A was `" in reveal or "A was" in reveal
    page.screenshot(path=str(ARTIFACTS / "arena.png"), full_page=True)
    # undo (off the queue too), a refused second undo shown as an error, and a new vote
    page.click("#arena-undo")
    page.wait_for_selector("#vote-a:not([disabled])", timeout=60_000)
    assert "Vote undone" in page.inner_text("#arena-reveal")
    page.click("#arena-undo")  # nothing left to undo: said in the reveal line (off the queue there is no toast)
    page.wait_for_function("() => document.querySelector('#arena-reveal').innerText.includes('no vote of yours')",
                           timeout=60_000)
    page.keyboard.press("2")
    page.wait_for_function("() => document.querySelector('#arena-reveal').innerText.includes('Vote saved')",
                           timeout=60_000)
    assert "B is better" in page.inner_text("#arena-reveal")
    assert "in all: 1" in page.inner_text("#arena-progress").replace("*", "")
    # the export, downloaded from the Train tab (the CLI cannot open the DB while the app holds it)
    page.get_by_role("tab", name="Train").click()
    page.get_by_text("Export the labeled data").click()
    page.click("#export-button")
    link = page.wait_for_selector("#export-file a[href]", timeout=60_000)
    with urllib.request.urlopen(urllib.parse.urljoin(app_url, link.get_attribute("href"))) as response:
        exported = response.read().decode()
    import datasets

    export_path = tmp_path / "export.jsonl"
    export_path.write_text(exported)
    rows = datasets.load_dataset("json", data_files=str(export_path), split="train")
    assert any(row["prompt"][-1]["content"] == "Name three primary colors." for row in rows)


def test_the_arena_says_when_both_answers_are_identical(page):
    """Greedy answers from two samples of the base are the same text: the line under them says so."""
    page.get_by_role("tab", name="Arena").click()
    page.get_by_text("Models compared (admins)").click()
    page.get_by_text("Sampling settings (apply to both sides)").locator("visible=true").first.click()
    set_greedy(page, "arena")
    page.fill("#arena-max-tokens input[type=number]", "24")
    page.press("#arena-max-tokens input[type=number]", "Enter")
    page.fill("#arena-prompt textarea", "What is the capital of France?")
    page.click("#arena-generate")
    page.wait_for_selector("#vote-a:not([disabled])", timeout=180_000)
    a, b = (page.inner_text(f"#arena-{side}") for side in ("a", "b"))
    assert a.replace("Model A", "") == b.replace("Model B", "")  # the premise: greedy, one model, one text
    assert "identical" in page.inner_text("#arena-reveal") and "Tie" in page.inner_text("#arena-reveal")


def test_evals_tab_blocks_a_collapsed_checkpoint_until_an_override_reason(page, app_data_dir):
    from evals.report import build_report

    prompts = ["What is DNS?", "Write a haiku about rain.", "How do I boil an egg?", "Explain gravity."]
    base = ["DNS maps names to IP addresses.", "Rain taps on the roof...", "Boil it for nine minutes.",
            "Gravity pulls masses together."]
    report = build_report(prompts, base, ["Dear, how can I help you?"] * 4)
    assert report["regression"] and report["checks"]["canned_reply"]["flagged"]
    # evals.report.leave_out_trained: a fifth eval prompt was in the round's training data
    report["trained_on"] = {"left_out": ["5"], "snapshots": ["snapshots/dpo-x.jsonl"], "unreadable": []}
    checkpoint = app_data_dir / "checkpoints" / "r-collapsed"
    (checkpoint / "adapter").mkdir(parents=True)
    (checkpoint / "round.json").write_text(json.dumps({"round_id": "r-collapsed", "finished_at": "2026-01-01"}))
    (checkpoint / "eval.json").write_text(json.dumps(report))

    page.get_by_role("tab", name="Evals").click()
    page.wait_for_function("() => document.querySelector('#evals-gate').innerText.includes('Promotion blocked')",
                           timeout=30_000)
    assert "canned_reply" in page.inner_text("#evals-gate")
    assert "1 eval prompt left out: this round (or one it continued) trained on it" in page.inner_text(
        "#evals-gate") and "The checks ran on the other 4." in page.inner_text("#evals-gate")
    assert "REGRESSION" in page.inner_text("#evals-table")
    page.click("#evals-promote")  # no reason: refused
    page.wait_for_selector("text=write the reason", timeout=10_000)
    page.get_by_label("Override reason (required only when the gate blocks)").fill("demo build, known issue")
    page.click("#evals-promote")
    page.wait_for_function("() => document.querySelector('#evals-gate').innerText.includes('r-collapsed')",
                           timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "evals.png"), full_page=True)
    assert "Current candidate: r-collapsed" in page.inner_text("#evals-gate").replace("`", "")
    shutil.rmtree(checkpoint)  # a made-up adapter dir: later tests' Chat would default to it and fail to load it


def test_markdown_images_in_a_prompt_fetch_nothing(page):
    fetched = []
    page.on("request", lambda request: fetched.append(request.url) if "tracker.invalid" in request.url else None)
    open_chat(page, max_new_tokens=16)
    page.fill("#chat-input textarea", "Describe ![pixel](http://tracker.invalid/p.png) and <img src='http://tracker.invalid/i.png'>")
    page.click("#chat-send")
    page.wait_for_function("() => document.querySelector('#chat-stats').innerText.includes('tok/s')", timeout=180_000)
    shown = page.inner_text("#chat-left")
    assert "![pixel](http://tracker.invalid/p.png)" in shown and "<img" in shown  # shown as typed
    assert fetched == []  # and nothing was requested from the image URLs
