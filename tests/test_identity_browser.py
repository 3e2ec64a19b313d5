"""Who is asking reaches the handlers: two users log in to the real app (with --auth-file) in two
browsers, vote in the Arena and promote in the Evals tab, and each vote and the promotion are stored
under their own user name, not "local".

Runs the app on the tiny random model, so it needs only Chromium and a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labeling.review import version_of
from tests.test_browser import CHROMIUM, browser, serving_app  # noqa: F401 (fixture)
from tests.test_loop_browser import wait_text

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)"),
]
USERS = {"ann": "ann-secret", "bob": "bob-secret"}
FIRST_GUIDELINES = "Be kind."
QUEUED = ("Name a river.", "Name a mountain.")
GUIDELINES = "## How to vote\nPrefer the answer that is correct; if both are, the shorter one."


@pytest.fixture
def login_app(tmp_path_factory, tiny_model_dir, trained_checkpoint):
    import shutil

    data_dir = tmp_path_factory.mktemp("login-data")
    shutil.copytree(trained_checkpoint, data_dir / "checkpoints" / trained_checkpoint.name)  # one to promote
    auth = data_dir / "users.txt"
    auth.write_text("".join(f"{user}:{password}\n" for user, password in USERS.items()))
    # the team's Arena sampling, which fills the (admin) users' controls on page load: short answers,
    # which is all this test needs
    (data_dir / "arena_sampling.json").write_text(json.dumps({"max_new_tokens": 32}))
    from labeling.store import Store

    with Store(data_dir) as store:  # a first version: the test sees it arrive in the editor before typing
        store.save_guidelines(FIRST_GUIDELINES, "bob")
        store.import_prompts([{"prompt": prompt} for prompt in QUEUED], source="test")
    with serving_app(data_dir, "--auth-file", str(auth), "--base-model", str(tiny_model_dir),
                     log=data_dir / "app.log") as (url, process):
        yield url, data_dir, process


def log_in(browser, url: str, user: str, password: str | None = None):
    """A fresh browser context (its own cookies: its own login) logged in as `user`: (context, page)."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password or USERS[user])
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#arena-prompt")
    return context, page


def vote_once(page, prompt: str, key: str) -> None:
    page.fill("#arena-prompt textarea", prompt)
    page.click("#arena-generate")
    page.wait_for_selector("#vote-a:not([disabled])", timeout=120_000)
    page.keyboard.press(key)
    wait_text(page, "#arena-reveal", "Vote saved")


def test_each_logged_in_user_votes_under_their_own_name(browser, login_app):
    url, data_dir, process = login_app
    sessions = {user: log_in(browser, url, user) for user in USERS}
    for user, (_, page) in sessions.items():
        wait_text(page, "#arena-progress", f"{user} · labeled today: 0")  # the greeting names the user
    # two annotators who take the next queued prompt at the same moment get different ones
    for _, page in sessions.values():
        page.click("#arena-next")
    for _, page in sessions.values():
        page.wait_for_function("() => document.querySelector('#arena-prompt textarea').value.length > 0")
    assert sorted(page.input_value("#arena-prompt textarea") for _, page in sessions.values()) == sorted(QUEUED)
    bob = sessions["bob"][1]  # an admin writes the labeling guidelines in the Arena's admin panel
    bob.get_by_text("Models compared (admins)").click()
    # opening the panel loads the saved text into the editor; typing before it lands would be replaced
    bob.wait_for_function("text => document.querySelector('#arena-guidelines-editor textarea')?.value === text",
                          arg=FIRST_GUIDELINES)
    bob.fill("#arena-guidelines-editor textarea", GUIDELINES)
    bob.click("#arena-guidelines-save")
    wait_text(bob, "#arena-guidelines-note", f"Saved: version {version_of(GUIDELINES)}")
    ann = sessions["ann"][1]
    ann.reload()  # the guidelines are read on every page load
    ann.get_by_text("Labeling guidelines (read these before voting)").click()
    # the page first shows the text built into it, then its load reply's: wait for the new version, since
    # "edited by bob" was true of the old text too (under load a test read it while the reply was pending)
    wait_text(ann, "#arena-guidelines-text", f"Version {version_of(GUIDELINES)}, edited by bob")
    assert "Prefer the answer that is correct" in ann.inner_text("#arena-guidelines-text")
    vote_once(sessions["ann"][1], "hello from ann", "1")
    vote_once(sessions["bob"][1], "hello from bob", "2")
    vote_once(sessions["ann"][1], "ann again", "3")
    wait_text(sessions["ann"][1], "#arena-progress", "ann · labeled today: 2")
    wait_text(sessions["bob"][1], "#arena-progress", "bob · labeled today: 1")
    # legacy user:password logins are admins: bob promotes, in his own browser
    bob.get_by_role("tab", name="Evals").click()
    wait_text(bob, "#evals-gate", "Not evaluated yet")
    bob.get_by_label("Override reason (required only when the gate blocks)").fill("bob checked it by hand")
    bob.click("#evals-promote")
    wait_text(bob, "#evals-gate", "Current candidate: r-trained")
    wait_text(bob, "#evals-overrides", "bob checked it by hand")  # listed among the gate's overrides
    overrides = bob.inner_text("#evals-overrides")
    assert "r-trained" in overrides and "bob" in overrides
    # Log out ends this browser's login only: ann's other browser (a second tab's login) keeps working
    _, other_ann = log_in(browser, url, "ann")
    ann.click("#logout")
    ann.get_by_label("username").wait_for()
    ann.goto(url)
    ann.get_by_label("username").wait_for()  # still logged out on the next visit
    other_ann.reload()
    wait_text(other_ann, "#arena-progress", "ann · labeled today: 2")
    for context, _ in sessions.values():
        context.close()
    process.terminate()  # DuckDB allows one process: read what was stored once the app let go
    process.wait(timeout=30)
    from labeling.store import Store

    store = Store(data_dir)
    by_user = sorted((row["annotator"], row["messages"][-1]["content"]) for row in store.labeled_rows())
    versions = {row["guidelines_version"] for row in store.labeled_rows()}
    promotions = [(p["round_id"], p["promoted_by"], p["reason"]) for p in store.promotions()]
    store.close()
    assert promotions == [("r-trained", "bob", "bob checked it by hand")]  # from the session, not a field
    assert by_user == [("ann", "ann again"), ("ann", "hello from ann"), ("bob", "hello from bob")]
    assert versions == {version_of(GUIDELINES)}  # every vote records the guidelines in force
