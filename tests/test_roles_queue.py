"""Roles hold in gradio's queue itself: a logged-in annotator who posts privileged events by
fn_index (as any script can; `api_visibility="private"` only hides them from the API page) changes
nothing, and an admin's identical calls work. Runs the real app on the tiny model, over HTTP.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid

import httpx
import pytest

from labeling import journal
from tests.conftest import ROOT
from tests.test_browser import serving_app

pytestmark = pytest.mark.slow
PASSWORDS = {"ann": "ann-password", "ada": "ada-password"}


@pytest.fixture(scope="module")
def roles_app(tmp_path_factory, tiny_model_dir, trained_checkpoint):
    """One app for the module (each start costs seconds): (url, data dir, its log)."""
    from labeling.users import add_user

    folder = tmp_path_factory.mktemp("roles")
    data_dir = folder / "data"
    checkpoint = shutil.copytree(trained_checkpoint, data_dir / "checkpoints" / trained_checkpoint.name)
    # a passing report, but made on other weights than the adapter now on disk: the gate must not count it
    (checkpoint / "eval.json").write_text(json.dumps({"regression": False, "checks": {},
                                                      "adapter_fingerprint": "0123456789abcdef"}))
    auth = folder / "users.txt"
    add_user(auth, "ann", "annotator", PASSWORDS["ann"])
    add_user(auth, "ada", "admin", PASSWORDS["ada"])
    log = folder / "app.log"
    with serving_app(data_dir, "--auth-file", str(auth), "--base-model", str(tiny_model_dir), log=log) as (url, _):
        yield url.rstrip("/"), data_dir, log


def stored(data_dir, kind: str) -> list[dict]:
    """The rows of one kind the app has stored, oldest first, read from its journal while it runs: only the
    app may open the DB, and the journal is the copy anyone may read, written from the same rows once each
    commit succeeded (labeling/journal.py)."""
    records, unreadable = journal.read(journal.default_dir(data_dir))
    assert unreadable == 0
    return [record["row"] for record in records if record["type"] == kind]


def session(url: str, user: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    client.session_hash = uuid.uuid4().hex[:11]  # one browser session: gradio keeps its pickers' choices
    response = client.post("/login", data={"username": user, "password": PASSWORDS[user]})
    assert response.status_code == 200, response.text
    # gradio marks its cookies Secure, which httpx will not send over plain http: send them by hand
    client.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in response.cookies.items())
    return client


def call(client: httpx.Client, fn_index: int, data: list) -> dict:
    """Post one event to the queue by fn_index and return its completion message, with the warnings it
    showed (bad input is refused with a warning toast, the page left as it was) under "warnings"."""
    session_hash = client.session_hash
    joined = client.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                         "session_hash": session_hash, "event_data": None})
    assert joined.status_code == 200, joined.text
    warnings = []
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "log":
                    warnings.append(message.get("log"))
                if message.get("msg") == "process_completed":
                    return {**message, "warnings": warnings}
    raise AssertionError("the event never completed")


def test_privileged_events_by_fn_index_refuse_an_annotator_and_serve_an_admin(roles_app):
    url, data_dir, log = roles_app
    ann, ada = session(url, "ann"), session(url, "ada")
    fns = {dep.get("api_name"): dep["id"] for dep in ann.get("/config").json()["dependencies"]}
    calls = {  # privileged event -> inputs as the page would send them
        "promote": ["r-trained", "any reason at all"],
        "run_evals": ["r-trained", "", False],
        "cancel_evals": [None],
        "export_data": ["dpo", "jsonl"],
        "cancel_round": ["dpo", False, False],
        "past_rounds": [],
    }
    for client in (ann, ada):  # what the page does on load: fill the Evals picker for this session
        call(client, fns["refresh"], [None])
    for name, data in calls.items():
        result = call(ann, fns[name], data)
        assert result["success"] is False, (name, result)
        # the picker an annotator gets is empty, so gradio itself refuses their promote / run_evals
        assert "needs the admin role" in json.dumps(result) or name in ("promote", "run_evals"), (name, result)
    assert not (data_dir / "runs").exists() and not (data_dir / "snapshots").exists()  # nothing started or written
    nobody = "00000000-0000-4000-8000-000000000000"
    for name in ("exclude_vote", "lift_exclusion"):  # the Review section's actions need a reviewer
        refused = call(ann, fns[name], [nobody, "spam"])
        assert refused["success"] is False and "needs the reviewer role" in json.dumps(refused), refused
    past_the_role = call(ada, fns["exclude_vote"], [nobody, "spam"])
    assert "unknown comparison id" in json.dumps(past_the_role), past_the_role
    refused = call(ann, fns["save_guidelines"], ["# Anything goes"])
    assert refused["success"] is False and "needs the admin role" in json.dumps(refused), refused
    stale = call(ada, fns["promote"], ["r-trained", ""])
    assert "blocked by the eval gate" in json.dumps(stale), stale  # keyed on the fingerprint, not the name
    unpicked = call(ada, fns["promote"], [None, "a reason"])  # refused with a warning; the page stays as it was
    assert "Pick a checkpoint first" in json.dumps(unpicked["warnings"]), unpicked
    result = call(ada, fns["promote"], calls["promote"])
    assert result["success"] is True, result
    logged = log.stat().st_size
    exported = call(ada, fns["export_data"], calls["export_data"])  # past the role check, to the data
    assert "no rows to write" in json.dumps(exported), exported
    assert b"Traceback" not in log.read_bytes()[logged:]  # nothing labeled yet is the admin's to fix, not a fault
    # the Arena's sampling: what the admin generates with is what annotators get, whatever they send
    unset = call(ada, fns["refresh_models"], [None, None])["output"]["data"]
    assert [update.get("value") for update in unset] == ["base", "r-trained"]  # unset sides: base vs the candidate
    # a refresh sent before the admin picked (a tab select, under load) must not put the old pick back: where
    # the page's values still exist, the reply carries the choices only, for both the Arena's and the Evals' pickers
    kept = call(ada, fns["refresh_models"], ["base", "r-trained"])["output"]["data"]
    assert all("value" not in update and ["r-trained", "r-trained"] in update["choices"] for update in kept), kept
    assert "value" not in call(ada, fns["refresh"], ["r-trained"])["output"]["data"][0]
    admin_run = call(ada, fns["start"], ["admin sets the pace", {}, False, "base", "base", 0.0, 1.0, 16, 5, ""])
    assert admin_run["success"] is True, admin_run
    ann_run = call(ann, fns["start"], ["annotator asks", {}, False, None, None, 1.5, 0.5, 64, 7, "be rude"])
    assert ann_run["success"] is True, ann_run
    ann.close(), ada.close()
    promotions = stored(data_dir, "promotion")
    asked = {json.loads(row["messages"])[-1]["content"]: row for row in stored(data_dir, "comparison")}
    annotators = json.loads(asked["annotator asks"]["params"])
    assert {k: annotators[k] for k in ("temperature", "top_p", "max_new_tokens", "system_prompt")} == \
        {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16, "system_prompt": ""}
    assert annotators["seed"] != 7  # a fresh seed, not the page's
    assert annotators["int8_decode"] is True  # the app's default for a bf16 model on the CPU, recorded per comparison
    assert {asked["annotator asks"]["model_a"], asked["annotator asks"]["model_b"]} == {"base", "r-trained"}
    from models.loading import adapter_fingerprint

    # the annotator's call left no row; the admin's names the weights it promoted, and makes them the candidate
    assert [{k: row[k] for k in ("round_id", "promoted_by", "reason", "overridden", "adapter_fingerprint")}
            for row in promotions] == \
        [{"round_id": "r-trained", "promoted_by": "ada", "reason": "any reason at all", "overridden": True,
          "adapter_fingerprint": adapter_fingerprint(data_dir / "checkpoints/r-trained/adapter")}]


def test_votes_skip_the_queue_and_still_need_a_login_and_the_annotators_own_vote(roles_app):
    """The page's vote and undo are answered in the reply to one POST (/gradio_api/run/...), as the
    browser sends them: gradio refuses that route to any queued event, so a 'saved' reply here means the
    vote never waited in the queue. The route still needs a login, and undo only takes one's own vote."""
    url, data_dir, log = roles_app
    logged = log.stat().st_size  # this test's part of the shared app's log starts here
    ann, ada = session(url, "ann"), session(url, "ada")
    fns = {dep.get("api_name"): dep["id"] for dep in ann.get("/config").json()["dependencies"]}
    generated = call(ann, fns["arena_generate"], ["Name a colour.", 8])
    assert generated["success"] is True, generated
    comparison_id = generated["output"]["data"][0][0]  # gr.api sends the (id, a, b) tuple as one value

    def run(client, api_name, data):
        return client.post(f"/gradio_api/run/{api_name}", json={"data": data, "session_hash": client.session_hash})

    with httpx.Client(base_url=url, timeout=60) as anonymous:
        refused = anonymous.post("/gradio_api/run/arena_vote", json={"data": [comparison_id, "a", ""]})
        assert refused.status_code == 401, refused.text
    bad = run(ann, "arena_vote", [comparison_id, "left", ""])
    assert bad.status_code == 500 and "not saved" in bad.text, bad.text  # a clear refusal, nothing stored
    saved = run(ann, "arena_vote", [comparison_id, "a", ""])
    assert saved.status_code == 200 and saved.json()["data"][0].startswith("saved: vote"), saved.text
    again = run(ann, "arena_vote", [comparison_id, "b", ""])
    assert again.json()["data"][0].startswith("already recorded"), again.text
    not_theirs = run(ada, "arena_undo", [comparison_id])
    assert not_theirs.status_code == 500 and "not undone" in not_theirs.text, not_theirs.text
    undone = run(ann, "arena_undo", [comparison_id])
    assert undone.status_code == 200 and undone.json()["data"][0].startswith("undone"), undone.text
    # the page's generate stays queued (it streams and shares the decode loop): the direct route refuses it
    assert run(ann, "arena_generate", ["Name a colour.", 8]).status_code == 404
    ann.close(), ada.close()
    # refusals are the user's to fix, not faults: the app's log carries no traceback for them
    assert b"Traceback" not in log.read_bytes()[logged:]


def test_the_api_samples_comparisons_as_the_admin_set_them_for_the_page(roles_app):
    """What an admin generates with in the Arena (temperature, top-p, system prompt) is what every
    annotator's comparison uses, and /arena_generate's too: the data the API adds is drawn as the page's.
    The length stays the API caller's."""
    url, data_dir, _ = roles_app
    ann, ada = session(url, "ann"), session(url, "ada")
    fns = {dep.get("api_name"): dep["id"] for dep in ada.get("/config").json()["dependencies"]}
    # the Arena's inputs: prompt, state, keep going, model X, model Y (none: the default pair), temperature,
    # top-p, max new tokens, seed, system prompt
    admins = call(ada, fns["start"], ["Name a colour.", None, False, None, None, 0, 0.5, 16, 7, "Answer like a pirate."])
    assert admins["success"] is True, admins
    made = []
    for _ in range(2):
        answered = call(ann, fns["arena_generate"], ["Name a colour.", 12])
        assert answered["success"] is True, answered
        made.append(answered["output"]["data"][0])  # gr.api sends the (id, a, b) tuple as one value
    ann.close(), ada.close()
    comparisons = {row["id"]: row for row in stored(data_dir, "comparison")}
    answers = {}  # model -> what it answered: the default pair is base and the candidate, if one is promoted
    for comparison_id, answer_a, answer_b in made:
        row = comparisons[comparison_id]
        assert (row["answer_a"], row["answer_b"]) == (answer_a, answer_b)  # what the caller got is what was stored
        params = json.loads(row["params"])
        assert (params["temperature"], params["top_p"], params["system_prompt"], params["max_new_tokens"]) == \
            (0, 0.5, "Answer like a pirate.", 12), params
        for side in "ab":
            answers.setdefault(row[f"model_{side}"], set()).add(row[f"answer_{side}"])
    assert all(len(texts) == 1 for texts in answers.values()), answers  # greedy: each model said the same twice
    assert len({json.loads(comparisons[c]["params"])["seed"] for c, *_ in made}) == 2  # a fresh seed each time


def test_the_running_app_takes_added_and_removed_users_without_a_restart(roles_app):
    """An admin adds or removes a login with the CLI while the team works: a restart would stop every
    generation and log everyone out, so the app reads the auth file again when it changes."""
    url, data_dir, log = roles_app
    auth = data_dir.parent / "users.txt"
    original = auth.read_text()  # put back at the end: the app is the module's

    def users(*args, stdin=""):
        done = subprocess.run([sys.executable, "-m", "labeling", "users", *args, "--auth-file", str(auth)],
                              input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def log_in(user, password):
        return httpx.post(f"{url}/login", data={"username": user, "password": password}, timeout=60).status_code

    assert log_in("cy", "cy-password") != 200  # not a user yet
    users("add", "--user", "cy", "--role", "annotator", stdin="cy-password\n")
    assert log_in("cy", "cy-password") == 200  # the same app, no restart
    assert users("list").split() == ["ann", "annotator", "ada", "admin", "cy", "annotator"]
    ann = session(url, "ann")  # logged in before ann is removed
    fns = {dep.get("api_name"): dep["id"] for dep in ann.get("/config").json()["dependencies"]}
    users("remove", "--user", "ann")
    assert log_in("ann", PASSWORDS["ann"]) != 200
    refused = call(ann, fns["arena_generate"], ["Name a colour.", 8])  # an open page's next action
    assert refused["success"] is False and "no longer in the app's auth file" in json.dumps(refused), refused
    ann.close()
    auth.write_text(auth.read_text() + "not a user line\n")  # a bad hand edit keeps the users the app had
    assert log_in("cy", "cy-password") == 200
    assert "the app keeps the users it had" in log.read_text()
    auth.write_text(original)
    assert log_in("ann", PASSWORDS["ann"]) == 200
