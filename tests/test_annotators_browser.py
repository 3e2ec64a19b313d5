"""Two annotators label overlapping comparisons in two browsers (the double-labeled share set to
100%), and a reviewer's Annotators tab shows their agreement and position bias; the reviewer then
excludes one comparison from training in the Review section, and the journal (what the CLI reads
while the app runs) leaves its votes out. The real app on the tiny model, with PBKDF2 logins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labeling.store import Store
from labeling.users import add_user
from tests.test_browser import ARTIFACTS, CHROMIUM, bot_selector, browser, serving_app  # noqa: F401 (fixture)
from tests.test_identity_browser import log_in as identity_log_in
from tests.test_loop_browser import wait_text

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)"),
]
PASSWORDS = {"ann": "ann-secret", "bob": "bob-secret", "rita": "rita-secret"}


@pytest.fixture
def team_app(tmp_path, tiny_model_dir):
    data_dir = tmp_path / "data"
    with Store(data_dir) as store:
        store.import_prompts([{"prompt": f"queued question {i}"} for i in range(4)], source="test")
    (data_dir / "labeling_settings.json").write_text(json.dumps({"overlap_share": 1.0}))  # every prompt twice
    # the team's Arena sampling (what annotators generate with): short answers, which is all this test reads
    (data_dir / "arena_sampling.json").write_text(json.dumps({"max_new_tokens": 32}))
    auth = tmp_path / "users.txt"
    for user, role in (("ann", "annotator"), ("bob", "annotator"), ("rita", "reviewer")):
        add_user(auth, user, role, PASSWORDS[user])
    with serving_app(data_dir, "--auth-file", str(auth), "--base-model", str(tiny_model_dir),
                     log=tmp_path / "app.log") as (url, _):
        yield url, data_dir


def log_in(browser, url: str, user: str):
    return identity_log_in(browser, url, user, PASSWORDS[user])[1]


def answers(page) -> list[str]:
    return [page.inner_text(f"#arena-{side}") for side in ("a", "b")]


def label_new(page, key: str) -> list[str]:
    """Take the next queued prompt, generate, vote."""
    page.click("#arena-next")
    page.wait_for_function("() => document.querySelector('#arena-prompt textarea').value.length > 0")
    page.click("#arena-generate")
    page.wait_for_selector("#vote-a:not([disabled])", timeout=60_000)
    return vote_on_shown(page, key)


def vote_on_shown(page, key: str) -> list[str]:
    """Read both answers on screen, vote with the keyboard shortcut, wait until it is saved.

    The vote buttons come on in the same reply as the answers, but a pane draws its messages on its own
    tick: once, a page showed pane B's prompt without its answer yet. So wait until both panes show one."""
    page.wait_for_function("sels => sels.every(sel => [...document.querySelectorAll(sel)]"
                           ".some(e => e.innerText.trim().length > 0))",
                           arg=[bot_selector("arena-a"), bot_selector("arena-b")], timeout=30_000)
    shown = answers(page)
    page.keyboard.press(key)
    wait_text(page, "#arena-reveal", "Vote saved")
    return shown


def label_shared(page, key: str) -> list[str]:
    """Take the next queued task, which is someone else's comparison: its answers appear at once.

    The panes still show the last comparison until they draw the new one, which can come after the
    vote buttons (under load, a page read the old answers): wait until what they show has changed."""
    before = answers(page)
    page.click("#arena-next")
    page.wait_for_selector("#vote-a:not([disabled])", timeout=30_000)
    page.wait_for_function("before => ['a', 'b'].some((side, i) => "
                           "document.querySelector(`#arena-${side}`).innerText !== before[i])", arg=before)
    return vote_on_shown(page, key)


def visible_tabs(page, count: int) -> list[str]:
    """The tab names the page shows, once it shows `count` (the role's hiding arrives with the page load)."""
    page.wait_for_function("(n) => [...document.querySelectorAll('button[role=tab]')]"
                           ".filter(t => t.checkVisibility()).length === n", arg=count)
    return [t.inner_text() for t in page.locator("button[role=tab]").all() if t.is_visible()]


def test_two_annotators_share_comparisons_and_the_annotators_tab_shows_agreement(browser, team_app):
    team_app, data_dir = team_app
    ann, bob = log_in(browser, team_app, "ann"), log_in(browser, team_app, "bob")
    assert ann.locator("#annotators-table").count() == 0 or not ann.is_visible("#annotators-table")
    # each role sees its tabs only: no blank pages for an annotator (the server checks roles anyway)
    assert visible_tabs(ann, 1) == ["Arena"]
    assert not ann.get_by_text("Models compared (admins)").is_visible()
    votes = [("1", "1"), ("1", "2")]  # ann's key, then bob's on the same comparison
    for ann_key, bob_key in votes:
        generated = label_new(ann, ann_key)
        seen = label_shared(bob, bob_key)
        assert seen == generated  # bob voted on ann's answers, not on a new generation
    assert "Next queued prompt (2 waiting for you)" in ann.inner_text("#arena-reveal")  # the vote points on
    # bad input is refused with a warning, and the answers on screen stay (no red "Error" badges over them)
    shown = answers(ann)
    ann.fill("#arena-prompt textarea", "")
    ann.click("#arena-generate")
    ann.get_by_text("the prompt is empty").first.wait_for()
    assert answers(ann) == shown and "Error" not in ann.inner_text("#arena-a")
    rita = log_in(browser, team_app, "rita")
    assert visible_tabs(rita, 4) == ["Arena", "Chat", "Evals", "Annotators"]  # Train is for admins
    rita.get_by_role("tab", name="Annotators").click()
    wait_text(rita, "#review-exclusions", "Excluded from training now: nothing")  # an empty table says why
    wait_text(rita, "#annotators-summary", "2 comparisons labeled by more than one annotator")
    table = rita.inner_text("#annotators-table")
    assert "ann" in table and "bob" in table and "p = " in table
    assert table.count("0.00") == 2  # kappa: 1 of 2 agree, which is what chance predicts here (ann: a, a; bob: a, b)
    ARTIFACTS.mkdir(exist_ok=True)
    rita.screenshot(path=str(ARTIFACTS / "annotators.png"), full_page=True)
    summary = rita.inner_text("#annotators-summary")
    assert "Krippendorff's alpha over them" in summary and "n/a" not in summary

    # Review: rita picks the newest vote's comparison, is refused without a reason, then excludes it
    wait_text(rita, "#review-votes", "bob")
    newest = rita.locator("#review-votes [data-testid='cell-0-1']")  # the annotator cell of the newest vote
    assert newest.inner_text().strip() == "bob"
    newest.click()
    rita.wait_for_function("() => document.querySelector('#review-comparison textarea').value.length == 36")
    picked = rita.input_value("#review-comparison textarea")
    rita.click("#review-exclude")
    rita.get_by_text("the reason is empty").first.wait_for()
    assert "bob" in rita.inner_text("#review-votes") and "Error" not in rita.inner_text("#review-votes")  # the tables stay
    rita.fill("#review-reason textarea", "bob pressed a key by mistake")
    rita.click("#review-exclude")
    wait_text(rita, "#review-status", f"Excluded {picked}")
    table = rita.inner_text("#review-exclusions")
    assert picked in table and "rita" in table and "bob pressed a key by mistake" in table
    assert rita.input_value("#review-comparison textarea") == picked  # Lift works right away, no re-pick
    rita.screenshot(path=str(ARTIFACTS / "review.png"), full_page=True)
    store, _ = Store.from_journal(data_dir / "journal")  # what `python -m labeling export` reads meanwhile
    with store:
        kept = {r["comparison_id"] for r in store.labeled_rows()}
        assert picked not in kept and len(kept) == 1
        assert [e["by_user"] for e in store.exclusions()] == ["rita"]
    bob_clicks = bob.locator("#review-exclude")
    assert bob_clicks.count() == 0 or not bob_clicks.is_visible()  # an annotator never sees the section
    # no page load ran a reviewer's handler for an annotator (it showed them an error toast each time)
    assert "needs the reviewer role" not in (data_dir.parent / "app.log").read_text()
