"""What the Evals, Chat and Train tabs tell a user, checked in a real browser against the real app
(`app.py --auth-file ...`): on the tiny random model, whose rounds take seconds, and for the eval
progress and cancel on the embedded model, whose answers take long enough to watch (the tiny model's
come in about a second, before a 2 s timer could show a count):

- "Run evals again" shows that the eval started, its progress and its outcome, with no Refresh;
- a cancelled eval says who cancelled it, when, how far it got and what was kept;
- the Evals table's headers are readable (no word broken across lines, no sideways scrolling);
- the Chat shows the passages a "base + retrieval" side was given, with their files;
- a CPT round's held-out perplexity (before -> after) is shown with the round's results.

Screenshots go to test-artifacts/tabs-*.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from evals.report import add_baseline, add_promoted, add_prompted_base, build_report
from tests.conftest import ROOT
from tests.test_browser import ARTIFACTS, CHROMIUM, browser, serving_app  # noqa: F401 (fixture)
from tests.test_identity_browser import log_in
from tests.test_loop_browser import set_number, text_of, wait_text
from tests.test_report import make_identity_adapter

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)"),
]
ADMIN, PASSWORD = "bob", "bob-secret"
TRAINED = "r-trained"  # the conftest's checkpoint: no eval report yet
WIDE = "r-20250101-000000-wide"  # a report with both baselines and a flagged check: the widest table
FRESH, REPORTED = "r-20250102-000000-fresh", "r-20250101-000000-reported"  # embedded-model checkpoints
EARLIER = "r-20241231-000000-earlier"  # the promoted round the wide report was compared with
PASSING = "r-20250103-000000-passing"  # a passing report made before any promotion (tiny model)
N_PROMPTS = 8  # the embedded app's eval prompts: one batch a side, about 5 s on 2 cores (the 2 s timer sees it run)
FACTS = ["The town of Zarnuth holds 4,017 copper scrolls in its library.",
         "The mayor of Zarnuth is chosen by a coin toss every spring.",
         "Zarnuth's river is called the Velm and floods each autumn."]


def write_corpus(folder: Path) -> None:
    """Zarnuth's facts for retrieval, and enough lighthouse lines for a CPT round's chunks and held-out part."""
    folder.mkdir(parents=True)
    (folder / "zarnuth.md").write_text("\n\n".join(FACTS) + "\n")
    lines = [f"The lighthouse at cape {i} turns its lamp every {i % 7 + 2} seconds." for i in range(200)]
    (folder / "lighthouses.txt").write_text("\n\n".join(lines) + "\n")


def wide_report() -> dict:
    """A real report (evals.report) with a prompted and a retrieval baseline and a promoted round to compare
    with, canned_reply flagged against the base and against that round: the widest table there is."""
    prompts = ["What is DNS?", "Write a haiku about rain.", "How do I boil an egg?", "Explain gravity."]
    base = ["DNS maps names to IP addresses.", "Rain taps on the roof...", "Boil it for nine minutes.",
            "Gravity pulls masses together."]
    canned = ["Dear, how can I help you?"] * 4
    report = build_report(prompts, base, canned)
    add_prompted_base(report, prompts, base, base, "Be brief.", None)
    add_baseline(report, "retrieval_base", prompts, base, base, None, k=3, chunks=4, index="corpus")
    add_promoted(report, prompts, base, canned, None, round_id=EARLIER, weights="checkpoints/earlier/adapter",
                 adapter_fingerprint="0" * 16, answers_on_record=4)
    return report


def eval_prompts(path: Path, n: int) -> Path:
    questions = [json.loads(line)["turns"][0]
                 for line in (ROOT / "evals" / "prompts" / "mt_bench_questions.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions[:n]))
    return path


def write_checkpoint(checkpoints: Path, round_id: str, adapter: Path, report: dict | None = None,
                     base_model: str = "embedded") -> None:
    shutil.copytree(adapter, checkpoints / round_id / "adapter")
    (checkpoints / round_id / "round.json").write_text(json.dumps(
        {"round_id": round_id, "method": "dpo", "finished_at": round_id[2:17], "base_model": base_model}))
    if report is not None:
        (checkpoints / round_id / "eval.json").write_text(json.dumps(report))


def serve(data_dir: Path, base_model: Path, prompts: Path, max_new_tokens: int):
    auth = data_dir / "users.txt"
    auth.write_text(f"{ADMIN}:{PASSWORD}\n")  # a legacy plain line logs in as an admin
    return serving_app(data_dir, "--auth-file", str(auth), "--base-model", str(base_model),
                       "--eval-prompts", str(prompts), "--eval-max-new-tokens", str(max_new_tokens),
                       log=data_dir / "app.log")


@pytest.fixture(scope="module")
def tabs_app(tmp_path_factory, tiny_model_dir, trained_checkpoint):
    data_dir = tmp_path_factory.mktemp("tabs-data")
    shutil.copytree(trained_checkpoint, data_dir / "checkpoints" / TRAINED)
    write_checkpoint(data_dir / "checkpoints", WIDE, trained_checkpoint / "adapter", wide_report())
    write_corpus(data_dir / "corpus")
    with serve(data_dir, tiny_model_dir, eval_prompts(data_dir / "eval-prompts.jsonl", 8), 16) as (url, _):
        yield url, data_dir


@pytest.fixture(scope="module")
def evals_app(tmp_path_factory, embedded_model_dir):
    data_dir = tmp_path_factory.mktemp("evals-data")
    (data_dir / "cache").mkdir()
    os.symlink(embedded_model_dir.parent, data_dir / "cache" / "models")  # the session's converted model
    adapter = make_identity_adapter(embedded_model_dir, data_dir / "identity-adapter")
    write_checkpoint(data_dir / "checkpoints", FRESH, adapter)
    write_checkpoint(data_dir / "checkpoints", REPORTED, adapter, wide_report())
    prompts = eval_prompts(data_dir / "eval-prompts.jsonl", N_PROMPTS)
    with serve(data_dir, embedded_model_dir, prompts, 32) as (url, _):
        yield url, data_dir


@pytest.fixture
def open_page(browser):
    """(url) -> a page of that app, logged in as the admin; closed after the test."""
    contexts = []

    def open_for(url: str):
        context, page = log_in(browser, url, ADMIN, PASSWORD)
        contexts.append(context)
        page.set_viewport_size({"width": 1280, "height": 1000})
        return page

    yield open_for
    for context in contexts:
        context.close()


@pytest.fixture
def admin_page(open_page, tabs_app):
    return open_page(tabs_app[0])


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"tabs-{name}.png"), full_page=True)


def open_evals(page, round_id: str) -> None:
    page.get_by_role("tab", name="Evals").click()
    page.wait_for_selector("#evals-picker input")
    page.locator("#evals-picker input").click()
    page.locator("#evals-picker").get_by_role("option", name=round_id).click()


def pick_round(page, round_id: str, gate_says: str) -> None:
    """open_evals, until the pick holds. The tab's select event refreshes the picker with what the page held
    when it was sent (nothing yet, right after load): under the suite's load its reply landed after the pick
    and set the newest round back, and the promote that followed promoted that one. By the time the picked
    round's gate shows, such a reply has landed (the view's events are answered in order), so the picker
    then says whether the pick held."""
    open_evals(page, round_id)
    for _ in range(3):
        wait_text(page, "#evals-gate", gate_says)
        if page.input_value("#evals-picker input") == round_id:
            return
        page.locator("#evals-picker input").click()
        page.locator("#evals-picker").get_by_role("option", name=round_id).click()
    raise AssertionError(f"the Evals picker kept going back from {round_id}")


def record_progress(page) -> None:
    """Keep every text the progress line shows (the timer may replace one within 2 s)."""
    page.evaluate("""() => {
        window.progressLines = [];
        const element = document.querySelector('#evals-progress');
        const keep = () => window.progressLines.push(element.innerText);
        new MutationObserver(keep).observe(element, {subtree: true, childList: true, characterData: true});
    }""")


def broken_words(page, selector: str) -> list[str]:
    """Words inside `selector` that the browser drew on more than one line."""
    return page.evaluate("""(selector) => {
        const broken = [];
        for (const cell of document.querySelectorAll(selector)) {
            if (!cell.checkVisibility({visibilityProperty: true})) continue;  // gradio's hidden sizing copy
            const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                for (const word of node.data.matchAll(/\\S+/g)) {
                    const range = document.createRange();
                    range.setStart(node, word.index);
                    range.setEnd(node, word.index + word[0].length);
                    const rects = [...range.getClientRects()].filter(r => r.width > 0);
                    const tops = new Set(rects.map(r => Math.round(r.top)));
                    if (tops.size > 1) broken.push(word[0]);
                }
            }
        }
        return broken;
    }""", selector)


def clipped(page, selector: str) -> list[str]:
    """Elements inside `selector` whose content is wider than their box (cut off, or scrolled sideways)."""
    return page.evaluate("""(selector) => [...document.querySelectorAll(selector + ' *')]
        .filter(e => e.checkVisibility({visibilityProperty: true}))  // not gradio's hidden sizing copy
        .filter(e => getComputedStyle(e).overflowX !== 'visible' && e.scrollWidth > e.clientWidth + 1)
        .map(e => `${e.tagName}.${e.className} ${e.scrollWidth}>${e.clientWidth}: ${e.innerText.slice(0, 40)}`)""",
                         selector)


def test_evals_table_headers_are_readable_at_common_widths(admin_page):
    page = admin_page
    open_evals(page, WIDE)
    wait_text(page, "#evals-table", "REGRESSION")
    for width in (1280, 1024):
        page.set_viewport_size({"width": width, "height": 1000})  # the columns have fixed widths: no re-sizing to await
        page.locator("#evals-table").screenshot(path=str(ARTIFACTS / f"tabs-evals-table-{width}.png"))
        assert broken_words(page, "#evals-table th, #evals-table td") == [], width
        assert clipped(page, "#evals-table") == [], width
    headers = page.eval_on_selector_all("#evals-table th", "els => els.map(e => e.innerText.trim())")
    assert {"check", "flag", "candidate", "prompted base", "vs retrieval base"} <= set(headers)
    # the gate names both reasons it blocks, and the round it was compared with, figures and all
    gate = text_of(page, "#evals-gate")
    assert ("Promotion blocked: flagged canned_reply; worse than the promoted round on canned_reply" in gate
            and f"Against the promoted round {EARLIER}, the one it would replace: worse than it on canned_reply "
                "(0 → 1)" in gate), gate
    page.get_by_text("Offending examples").click()
    wait_text(page, "#evals-examples", f"canned_reply, against the promoted round {EARLIER}")
    # the notes left the table for a legend under it, whole sentences with their paired evidence
    notes = text_of(page, "#evals-notes")
    assert "canned_reply: Share of answers" in notes and "newly flagged" in notes
    # below it nothing is left blank without a word: one round draws no line, and no vote rates a model yet
    wait_text(page, "#evals-trend-note", "One evaluated round so far")
    wait_text(page, "#evals-leaderboard", "No votes between two different models yet")


def test_run_evals_again_shows_progress_and_outcome_without_a_refresh(open_page, evals_app):
    url, data_dir = evals_app
    page = open_page(url)
    # the team's current candidate: promoted over its blocked gate, with a reason. A round's evals compare it
    # with the candidate too, the round its promotion would replace
    pick_round(page, REPORTED, "Promotion blocked")
    page.get_by_label("Override reason (required only when the gate blocks)").fill("the team's pick")
    page.click("#evals-promote")
    wait_text(page, "#evals-gate", f"Current candidate: {REPORTED}")
    open_evals(page, FRESH)
    wait_text(page, "#evals-gate", "Not evaluated yet")
    record_progress(page)
    page.click("#evals-rerun")
    wait_text(page, "#evals-progress", f"Evals of {FRESH} started")  # the click's own answer
    wait_text(page, "#evals-progress", "finished in", timeout=300_000)  # brought by the timer, not a Refresh
    lines = page.evaluate("window.progressLines")
    # one pass, base and candidate together: the promoted round has the same weights, so its answers are these
    assert [line for line in lines if re.search(rf"running · \d+/{N_PROMPTS} prompts", line)], lines
    outcome = text_of(page, "#evals-progress")
    assert "no regression" in outcome or "a regression was flagged" in outcome, outcome
    # the report and the gate arrived with it
    wait_text(page, "#evals-gate", "can be promoted" if "no regression" in outcome else "Promotion blocked")
    assert "canned_reply" in page.inner_text("#evals-table")
    assert (data_dir / "checkpoints" / FRESH / "eval.json").is_file()
    # compared with the promoted round: the same identity weights, so nothing got worse
    wait_text(page, "#evals-gate", f"Against the promoted round {REPORTED}, the one it would replace: no check got "
                                   "worse than it")
    report = json.loads((data_dir / "checkpoints" / FRESH / "eval.json").read_text())
    assert report["promoted"]["round_id"] == REPORTED and report["promoted"]["flagged"] == []
    assert report["promoted"]["same_weights"]
    # a second evaluated round: the plot gets it (a tick per round, #1 and #2, none between) and the one-round note goes
    page.wait_for_function("() => document.querySelector('#evals-trend').innerText.split('\\n').includes('#2')")
    ticks = page.evaluate("() => document.querySelector('#evals-trend').innerText.split('\\n')")
    between = [tick for tick in ticks if re.fullmatch(r"\d+\.\d+", tick) and float(tick) > 1]
    assert "#1" in ticks and not between, ticks  # the values' axis runs 0.0-1.0: no round 1.05, 1.10, ...
    assert "One evaluated round" not in text_of(page, "#evals-trend-note")
    shot(page, "evals-finished")


def test_a_cancelled_eval_says_who_when_how_far_and_what_was_kept(open_page, evals_app):
    url, data_dir = evals_app
    page = open_page(url)
    report = data_dir / "checkpoints" / REPORTED / "eval.json"
    before = report.read_bytes()
    open_evals(page, REPORTED)
    wait_text(page, "#evals-gate", "Promotion blocked")
    page.fill("#evals-baseline textarea", "Be brief.")  # a second pass: the cancel lands well before the end
    page.click("#evals-rerun")
    page.wait_for_function("""() => /running · \\d+\\/\\d+ prompts/.test(
        document.querySelector('#evals-progress').innerText)""", timeout=180_000)
    page.click("#evals-cancel")
    wait_text(page, "#evals-progress", f"evals of {REPORTED} cancelled by {ADMIN} at ", timeout=90_000)
    line = text_of(page, "#evals-progress")
    assert re.search(rf"evals of {REPORTED} cancelled by {ADMIN} at \d\d:\d\d:\d\d UTC "
                     rf"after \d+/{2 * N_PROMPTS} prompts", line), line
    assert "its earlier report (written " in line and "is kept" in line, line
    assert "nothing was written" not in line
    assert report.read_bytes() == before  # the earlier report really is untouched
    shot(page, "evals-cancelled")
    # the Train tab, where a round's cancel is reported, says the same
    page.get_by_role("tab", name="Train").click()
    wait_text(page, "#train-status", f"evals of {REPORTED} cancelled by {ADMIN}")
    assert "its earlier report" in text_of(page, "#train-status")


def test_chat_shows_the_passages_base_plus_retrieval_was_given(admin_page):
    page = admin_page
    page.get_by_role("tab", name="Chat").click()
    page.wait_for_selector("#chat-input textarea")
    for side, model in (("left", "base + retrieval"), ("right", "base")):
        page.click(f"#chat-{side}-model input")
        page.locator(f"#chat-{side}-model").get_by_role("option", name=model, exact=True).click()
    page.fill("#chat-input textarea", "How many copper scrolls does the library of Zarnuth hold?")
    page.click("#chat-send")
    wait_text(page, "#chat-passages", "Retrieved passages", timeout=120_000)
    wait_text(page, "#chat-stats", "tok/s", timeout=120_000)
    passages = text_of(page, "#chat-passages")
    assert "Left (base + retrieval) was given 3 passages" in passages, passages
    assert "Right" not in passages  # the plain base was given none
    first = page.locator("#chat-passages li").first.inner_text()
    assert first.startswith("zarnuth.md:") and "4,017 copper scrolls" in first, first  # best match first, with its file
    shot(page, "chat-passages")
    page.get_by_text("Clear", exact=True).click()  # the row's button, not the chatbots' own icons
    page.wait_for_function("() => !document.querySelector('#chat-passages').innerText.includes('Retrieved')")


def test_a_cpt_round_shows_its_held_out_perplexity(admin_page, tabs_app):
    page = admin_page
    page.get_by_role("tab", name="Train").click()
    page.get_by_text("cpt", exact=True).click()
    # the corpus the fixture wrote; the tab's first summary (the DPO data lint, with its sentence encoder) goes
    # first, in order, and took over 30 s once with a training subprocess on the other core
    wait_text(page, "#train-data", "chunks", timeout=90_000)
    page.get_by_text("Hyper-parameters (from the recipe; edit freely)").click()
    wait_text(page, "#train-config", "cpt_qlora")  # the method's recipe is loaded
    set_number(page, "#knob-max_steps", 4)
    wait_text(page, "#train-config", "max_steps: 4")
    page.wait_for_selector("#train-start:not([disabled])", timeout=30_000)
    page.click("#train-start")
    wait_text(page, "#train-status", "Round result", timeout=240_000)
    status = text_of(page, "#train-status")
    assert re.search(r"held-out perplexity [\d.]+ → [\d.]+ \([+-]\d+%\)", status), status
    shot(page, "train-cpt-result")
    round_id = re.search(r"Round result (r-\S+-cpt):", status).group(1)
    # its evals start by themselves once the training process has exited; cancelling them keeps the round
    page.wait_for_function(  # loading its model, or already decoding
        f"() => /evals of .?{round_id}.? (started|running)/.test(document.querySelector('#train-status').innerText)",
        timeout=60_000)
    page.click("#train-cancel")
    wait_text(page, "#train-status", f"evals of {round_id} cancelled by {ADMIN}", timeout=60_000)
    status = text_of(page, "#train-status")
    assert "no eval report was written" in status and "the checkpoint itself is kept" in status, status
    assert "held-out perplexity" in status  # the round's result stays beside the cancel
    page.get_by_text("Past rounds (failed and cancelled ones keep their logs)").click()
    page.locator("#train-history").locator("..").get_by_role("button", name="↻ Refresh").click()
    wait_text(page, "#train-history", "held-out perplexity")
    shot(page, "train-cpt-cancelled-evals")


def test_a_report_made_before_another_round_was_promoted_asks_for_new_evals(admin_page, tabs_app, tiny_model_dir):
    """A passing report says nothing of a candidate promoted after it was made: promoting that round would
    replace the candidate unseen. So it takes a reason, until Run evals again compares the two."""
    page = admin_page
    url, data_dir = tabs_app
    # a round that finished and passed its evals while nothing was promoted (made in a temp dir and renamed
    # into place, as training and evals leave a checkpoint)
    prompts, answers = ["What is DNS?", "Explain gravity."], ["DNS maps names to addresses.", "Masses attract."]
    write_checkpoint(data_dir / "staging", PASSING, data_dir / "checkpoints" / TRAINED / "adapter", build_report(prompts, answers, answers),
                     base_model=str(tiny_model_dir))
    os.replace(data_dir / "staging" / PASSING, data_dir / "checkpoints" / PASSING)
    pick_round(page, TRAINED, "Not evaluated yet")  # never evaluated: its promotion is an override with a reason
    page.get_by_label("Override reason (required only when the gate blocks)").fill("the first round we trust")
    page.click("#evals-promote")
    wait_text(page, "#evals-gate", f"Current candidate: {TRAINED}")
    open_evals(page, PASSING)
    wait_text(page, "#evals-gate", f"Not compared with the current candidate {TRAINED}, the round a promotion would "
                                   "replace: this report was made before it was promoted.")
    assert "can be promoted" not in text_of(page, "#evals-gate") and "All checks against the base pass" in text_of(
        page, "#evals-gate")
    shot(page, "evals-not-compared")
    page.click("#evals-promote")  # no reason: refused, and the candidate stays
    page.wait_for_selector("text=Promotion is blocked by the eval gate", timeout=10_000)
    wait_text(page, "#evals-gate", f"Current candidate: {TRAINED}")
    page.click("#evals-rerun")
    wait_text(page, "#evals-progress", "finished in", timeout=120_000)
    # the same adapter as the candidate's: nothing to decode for it, and nothing can be worse
    wait_text(page, "#evals-gate", f"Against the promoted round {TRAINED}, the one it would replace: no check got "
                                   "worse than it.")
    assert "Not compared" not in text_of(page, "#evals-gate")
    # (its own answers, one fixed sentence, now fail against the base: the test adapter is trained to collapse)
    assert json.loads((data_dir / "checkpoints" / PASSING / "eval.json").read_text())["promoted"]["same_weights"]
