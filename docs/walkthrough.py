"""Walk the README's first hour in a real browser on the embedded model, with the app's defaults,
and save a screenshot of each step under docs/walkthrough/ plus the seconds each step took.

    .venv/bin/python docs/walkthrough.py [--data-dir DIR] [--labels 8]

It is the whole-loop browser test (tests/test_loop_browser.py) at full size: default answer
length, the default recipe, evals on the bundled 80 prompts. Needs Debian's chromium, and its
fonts-noto-color-emoji for the page's emoji (headless Chromium draws empty boxes without it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_browser import CHROMIUM, free_port, wait_until_serving  # noqa: E402
from tests.test_loop_browser import MT_BENCH, label, wait_text  # noqa: E402

OUT = ROOT / "docs" / "walkthrough"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="default: a fresh temp dir (the GGUF is converted once)")
    parser.add_argument("--labels", type=int, default=8)
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="walkthrough-"))
    OUT.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    port = free_port()
    started = time.perf_counter()
    log = (data_dir / "app.log")
    data_dir.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        app = subprocess.Popen([sys.executable, "app.py", "--data-dir", str(data_dir), "--port", str(port)],
                               cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, app, log, timeout=600)
        timings["start the app"] = time.perf_counter() - started
        walk(url, data_dir, args.labels, timings)
    finally:
        app.terminate()
        app.wait(timeout=30)
    (OUT / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=1))
    for step, seconds in timings.items():
        print(f"{step:<40} {seconds / 60:5.1f} min")
    return 0


def walk(url: str, data_dir: Path, labels: int, timings: dict) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)

        def step(name: str, since: float, shot: str) -> float:
            timings[name] = time.perf_counter() - since
            page.screenshot(path=str(OUT / f"{len(timings) - 1}-{shot}.png"), full_page=True)
            return time.perf_counter()

        t = time.perf_counter()
        page.get_by_text("Models compared (admins)").click()
        page.set_input_files("input[type=file]", str(MT_BENCH))
        page.click("#arena-import")
        wait_text(page, "#arena-progress", "in the queue: 40")
        t = step("import the MT-bench prompts", t, "import")
        page.get_by_text("Models compared (admins)").click()  # closed again: what an annotator sees
        label(page, labels)
        t = step(f"label {labels} comparisons", t, "label")

        page.get_by_role("tab", name="Train").click()
        wait_text(page, "#train-data", f"{labels} votes")
        page.wait_for_selector("#train-start:not([disabled])", timeout=30_000)
        page.click("#train-start")
        wait_text(page, "#train-status", "evals of", timeout=1_800_000)  # the round is done, its evals began
        t = step("train a DPO round", t, "train")
        page.wait_for_function(
            "() => /evals of .*finished|failed/.test(document.querySelector('#train-status').innerText)",
            timeout=1_800_000)
        t = step("evals (80 prompts)", t, "evals")

        page.get_by_role("tab", name="Evals").click()
        page.get_by_role("button", name="↻ Refresh").click()
        wait_text(page, "#evals-gate", "Current candidate")
        if "blocked" in page.inner_text("#evals-gate"):
            page.get_by_label("Override reason (required only when the gate blocks)").fill("walkthrough")
        page.screenshot(path=str(OUT / "4b-report.png"), full_page=True)
        page.click("#evals-promote")
        wait_text(page, "#evals-gate", "Current candidate: r-")
        t = step("read the eval and promote", t, "promote")

        page.get_by_role("tab", name="Arena").click()
        page.reload()
        wait_text(page, "#arena-progress", "promoted candidate")
        page.fill("#arena-prompt textarea", "Give me three tips for writing clear emails.")
        page.click("#arena-generate")
        page.wait_for_selector("#vote-a:not([disabled])", timeout=600_000)
        page.keyboard.press("1")
        wait_text(page, "#arena-reveal", "Vote saved")
        t = step("arena: candidate vs base", t, "arena")
        page.get_by_role("tab", name="Chat").click()
        page.fill("#chat-input textarea", "Give me three tips for writing clear emails.")
        page.click("#chat-send")
        wait_text(page, "#chat-stats", "tok/s", timeout=600_000)
        step("chat: base and candidate side by side", t, "chat")
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
