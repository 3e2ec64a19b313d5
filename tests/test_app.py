"""UI handlers called as plain functions on the tiny model: no browser, no server."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from pathlib import Path

import gradio as gr
import pytest

from labeling.store import Store
from models.loading import load_base
from models.chat import ChatModel
from ui import arena, chat
from ui import services as services_module
from pipeline import JobManager
from ui.services import Services, as_display_text
from ui.settings import Settings

SAMPLING = [0.0, 1.0, 24, 0, ""]  # greedy, so answers are reproducible


class FakeRequest:
    def __init__(self, username, session_hash="session-1"):
        self.username = username
        self.session_hash = session_hash


@pytest.fixture
def services(tiny_model_dir, data_dir, trained_checkpoint):
    shutil.copytree(trained_checkpoint, data_dir / "checkpoints" / trained_checkpoint.name)
    settings = Settings(data_dir=data_dir, base_model=str(tiny_model_dir))
    model, tokenizer = load_base(str(tiny_model_dir), dtype="fp32")
    services = Services(settings, ChatModel(model, tokenizer), Store(data_dir), JobManager(settings))
    yield services
    services.store.close()


def test_chat_send_streams_both_sides_and_regenerate_replaces_answers(services):
    updates = list(chat.send(services, "hello there", [], [], "base", "base", *SAMPLING))
    assert len(updates) >= 3  # the user turn, then streamed tokens, then stats
    left, right, left_view, right_view, box, stats, passages = updates[-1]
    assert [m["role"] for m in left] == ["user", "assistant"] and left[-1]["content"]
    assert updates[1][-1] == ""  # no "base + retrieval" side: no passages to show
    assert left == right  # same model and greedy: identical
    assert box == "" and "tok/s" in stats
    regenerated = list(chat.regenerate(services, left, right, "base", "base", *SAMPLING))[-1]
    assert len(regenerated[0]) == 2 and regenerated[0][-1]["content"] == left[-1]["content"]


def test_chat_stop_ends_the_turn_keeping_what_streamed(services, monkeypatch):
    long_sampling = (0.0, 1.0, 400, 0, "")  # greedy, up to 400 new tokens
    # an update per token, so the count below is in tokens (the page's pacing is tests/test_scheduler.py's;
    # the Stop through it, tests/test_browser.py's)
    monkeypatch.setattr(chat, "STREAM_EVERY_S", 0.0)
    me, other = FakeRequest("ann", "mine"), FakeRequest("bob", "theirs")
    services.request_stop("mine")  # a Stop pressed before the turn does not end it early
    turn = chat.send(services, "tell me a long story", [], [], "base", "base", *long_sampling, request=me)
    for step, update in enumerate(turn):
        if step == 3:
            services_module.stop(services, other)  # another browser's Stop leaves this turn alone
        if step == 6:
            services_module.stop(services, me)
    left, right, stats = update[0], update[1], update[5]
    assert stats.startswith("stopped · ")
    steps = int(stats.split("stopped · ")[1].split()[0])
    assert 5 <= steps < 20  # ended at the Stop, far short of the 400-token budget
    assert left[-1]["role"] == "assistant" and left[-1]["content"] and right[-1]["content"]
    assert services.stop_requests == {"theirs"}  # only this session's request was used up
    services.request_stop(None)  # a Stop with no session (an API client) stops nobody
    assert services.stop_requests == {"theirs"} and not services.take_stop_request(None)


def test_chat_sides_can_each_have_their_own_system_prompt(services):
    seen, stream = [], services.chat.stream

    def spy(conversations, *args, **kwargs):  # records what each side's model is given, then decodes for real
        seen.append(conversations)
        return stream(conversations, *args, **kwargs)

    services.chat.stream = spy
    *_, (left, right, *_) = chat.send(services, "hello", [], [], "base", "base", *SAMPLING[:4], "shared prompt",
                                      "You are a pirate.", "")
    assert seen[0][0][0] == {"role": "system", "content": "You are a pirate."}  # the side's own prompt wins
    assert seen[0][1][0] == {"role": "system", "content": "shared prompt"}  # the other keeps the shared one
    assert [m["role"] for m in left] == ["user", "assistant"]  # the history itself stays without it
    list(chat.regenerate(services, left, right, "base", "base", *SAMPLING, "", "Be brief."))
    assert seen[1][0][0]["role"] == "user" and seen[1][1][0] == {"role": "system", "content": "Be brief."}


def test_chat_rejects_empty_and_huge_prompts(services):
    for bad in ["", "   ", "x" * 9000]:
        with pytest.raises(gr.Error):
            list(chat.send(services, bad, [], [], "base", "base", *SAMPLING))


def test_chat_unknown_checkpoint_is_a_clear_error(services):
    with pytest.raises(gr.Error, match="not found"):
        list(chat.send(services, "hi", [], [], "base", "r-missing", *SAMPLING))


def test_html_is_shown_as_text_but_code_is_left_alone():
    shown = as_display_text("<script>alert(1)</script> and `<b>` and\n```\nif a < b:\n```")
    assert "<script>" not in shown and "&lt;script&gt;" in shown
    assert "`<b>`" in shown and "if a < b:" in shown


def run_arena(services, prompt, user="ann", state=None, keep_going=False, models=("base", "base"), outputs=None):
    outputs = [] if outputs is None else outputs
    outputs += arena.start(services, prompt, state or {}, keep_going, *models, *SAMPLING, request=FakeRequest(user))
    final = outputs[-1]
    state, view_a, view_b = final[0], final[1], final[2]
    buttons = final[5:]
    assert all(not b["interactive"] for out in outputs[:-1] for b in out[5:])  # locked while streaming
    assert all(b["interactive"] for b in buttons)  # unlocked once both answers are complete
    return state


def test_arena_stop_records_nothing_and_gives_the_prompt_back(services):
    long_sampling = (0.0, 1.0, 400, 0, "")
    me = FakeRequest("ann", "mine")
    turn = arena.start(services, "tell me a long story", {}, False, "base", "base", *long_sampling, request=me)
    for step, update in enumerate(turn):
        if step == 4:
            services_module.stop(services, me)
    state, prompt_box, reveal, buttons = update[0], update[3], update[4], update[5:]
    assert state is None and prompt_box == "tell me a long story" and reveal.startswith("Stopped")
    assert not any(b["interactive"] for b in buttons)  # nothing to vote on
    assert services.store.stats()["comparisons"] == 0
    assert run_arena(services, "and now a short one", user="ann")["id"]  # the next comparison is stored


def test_arena_vote_is_stored_once_and_reveals_models(services):
    state = run_arena(services, "Tell me about the sea")
    assert services.store.get_comparison(state["id"])["answer_a"] == state["answer_a"]
    first = arena.vote(services, "a", state, "", request=FakeRequest("ann"))
    assert "Vote saved" in first[1] and "A was `base`" in first[1]
    second = arena.vote(services, "b", state, "", request=FakeRequest("ann"))  # a replay that changes the choice
    assert "Already recorded" in second[1] and "**A is better**" in second[1]  # the reveal shows what is stored
    rows = services.store.labeled_rows()
    assert len(rows) == 1 and rows[0]["choice"] == "a" and rows[0]["annotator"] == "ann"
    assert services.store.annotator_progress("ann") == {"today": 1, "total": 1}


def test_arena_shuffles_blinds_and_reveals_a_trained_adapter(services):
    """Base against a really trained adapter: both orders happen, nothing names a model before the
    vote, and the reveal names the model that actually wrote each side."""
    pair = ("base", "r-trained")
    params = services_module.sampling(*SAMPLING)
    messages = [{"role": "user", "content": "tell me about the sea"}]
    services.adapter_for("r-trained")
    base_answer, adapter_answer = services.chat.generate([messages, messages], [None, "r-trained"], params)
    assert base_answer != adapter_answer  # the adapter really changed the model
    random.seed(7)  # the shuffle uses `random`; a fixed seed keeps the test deterministic
    orders = set()
    for n in range(8):
        outputs = []
        state = run_arena(services, "tell me about the sea", models=pair, outputs=outputs)
        shown = repr([out[1:] for out in outputs])  # everything the page gets; gr.State stays on the server
        assert "r-trained" not in shown and "`base`" not in shown
        written_by = {"base": base_answer, "r-trained": adapter_answer}
        assert state["answer_a"] == written_by[state["model_a"]]
        assert state["answer_b"] == written_by[state["model_b"]]
        orders.add((state["model_a"], state["model_b"]))
        reveal = arena.vote(services, "a", state, "", request=FakeRequest("ann"))[1]
        stored = services.store.get_comparison(state["id"])
        assert f"A was `{stored['model_a']}`, B was `{stored['model_b']}`" in reveal
        assert {stored["model_a"], stored["model_b"]} == set(pair)
        assert stored["params"]["cut_off"] == [True, True]  # 24 tokens end neither answer
    assert orders == {pair, pair[::-1]}  # the adapter appeared on both sides


def test_arena_multi_turn_uses_chosen_answer_as_history(services):
    state = run_arena(services, "first question")
    state = arena.vote(services, "b", state, "my better answer", request=FakeRequest("ann"))[0]
    follow_up = run_arena(services, "second question", state=state, keep_going=True)
    assert [m["content"] for m in follow_up["messages"]] == ["first question", "my better answer", "second question"]


def test_two_annotators_voting_at_once_both_land(services):
    states = {user: run_arena(services, f"prompt from {user}", user=user) for user in ("ann", "bob")}
    barrier = threading.Barrier(2)

    def cast(user):
        barrier.wait()
        arena.vote(services, "tie", states[user], "", request=FakeRequest(user))

    threads = [threading.Thread(target=cast, args=(user,)) for user in states]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(r["annotator"] for r in services.store.labeled_rows()) == ["ann", "bob"]


def test_arena_api_endpoints_round_trip(services):
    with pytest.raises(ValueError, match="max_new_tokens"):
        arena.api_generate(services, "api prompt", FakeRequest("bot"), max_new_tokens=0)
    comparison_id, answer_a, answer_b = arena.api_generate(services, "api prompt", FakeRequest("bot"),
                                                           max_new_tokens=24)
    assert answer_a and answer_b
    stored = services.store.get_comparison(comparison_id)["params"]
    assert stored["max_new_tokens"] == 24  # the budget reached the model
    assert arena.api_vote(services, comparison_id, "b", "", FakeRequest("bot")).startswith("saved")
    assert arena.api_vote(services, comparison_id, "b", "", FakeRequest("bot")).startswith("already recorded")
    with pytest.raises(ValueError, match="choice"):
        arena.api_vote(services, comparison_id, "left", "", FakeRequest("bot"))


def test_queued_prompts_feed_the_arena(services, tmp_path):
    queue_file = tmp_path / "prompts.jsonl"
    queue_file.write_text('{"prompt": "queued one"}\n{"turns": ["queued two", "follow"]}\n')
    arena.import_prompts(services, str(queue_file), request=FakeRequest("ann"))
    text, state = arena.take_queued(services, request=FakeRequest("ann"))[:2]
    assert text == "queued one"
    done = run_arena(services, text, state=state)
    arena.vote(services, "a", done, "", request=FakeRequest("ann"))
    assert arena.take_queued(services, request=FakeRequest("ann"))[0] == "queued two"


def test_the_next_queued_comparison_is_generated_while_the_annotator_reads(services, tmp_path):
    from labeling.users import User

    services.users = {"ann": User("ann", "annotator", "x", legacy=True)}
    queue_file = tmp_path / "prompts.jsonl"
    queue_file.write_text('{"prompt": "first queued"}\n{"prompt": "second queued"}\n')
    services.store.import_prompts(arena.load_prompt_file(str(queue_file)), source="test")
    ann = FakeRequest("ann")
    text, state = arena.take_queued(services, request=ann)[:2]
    done = run_arena(services, text, state=state)
    assert done["prompt_id"] is not None
    arena.vote(services, "a", done, "", request=ann)
    ahead = services.prefetched["ann"]  # started by the vote, for the next queued prompt
    assert ahead.prompt == "second queued"
    assert ahead.done.wait(timeout=60) and ahead.texts is not None
    steps = services.chat.scheduler.stats["steps"]
    text, state = arena.take_queued(services, request=ann)[:2]
    state = run_arena(services, text, state=state)
    assert services.chat.scheduler.stats["steps"] == steps  # nothing decoded: it was ready
    assert [state["answer_a"], state["answer_b"]] == [arena.end_at_last_sentence(t)[0] if not c else t
                                                      for t, c in zip(ahead.texts, ahead.complete)]
    stored = services.store.get_comparison(state["id"])
    assert stored["prompt_id"] == state["prompt_id"] and stored["annotator"] == "ann"
    assert stored["params"]["seed"] == ahead.params.seed  # recorded as it was generated
    assert "ann" not in services.prefetched  # used once


def test_build_ui_registers_the_named_api_endpoints(services):
    from app import build_ui

    demo = build_ui(services.settings, services)
    names = {d.api_name for d in demo.fns.values()}
    assert {"arena_generate", "arena_vote"} <= names


def test_every_handler_that_asks_who_is_asking_is_told(services):
    """gradio hands a handler the request (the user, and so their role) only where it can resolve the parameter's
    annotation to gr.Request. One it cannot resolve leaves the request out without an error: every user of a
    page with logins then looked like nobody, and an admin saw the annotator's page."""
    import inspect
    from typing import Optional

    from gradio.utils import get_type_hints

    from app import build_ui

    demo = build_ui(services.settings, services)
    asking = {d.fn.__qualname__: d.fn for d in demo.fns.values()
              if d.fn is not None and "request" in inspect.signature(d.fn).parameters}
    assert {"build_ui.<locals>.pages_for", "build_ui.<locals>.arena_on_load", "vote"} <= set(asking), asking
    unresolved = [name for name, fn in asking.items()
                  if get_type_hints(fn).get("request") not in (gr.Request, Optional[gr.Request])]
    assert not unresolved, unresolved


def test_cli_parsing_users_file_and_roles(tmp_path):
    from app import check_exposure, login_checker, parse_args
    from labeling.users import add_user, read_users, remove_user

    settings = parse_args(["--data-dir", str(tmp_path), "--port", "7999"])
    assert settings.port == 7999 and settings.data_dir == tmp_path
    auth = tmp_path / "users.txt"
    add_user(auth, "ann", "annotator", "ann-password")
    add_user(auth, "rita", "reviewer", "rita-password")
    add_user(auth, "ann", "admin", "new-password")  # re-adding replaces role and password
    assert "new-password" not in auth.read_text()  # stored hashed
    users = read_users(auth)
    assert {name: u.role for name, u in users.items()} == {"rita": "reviewer", "ann": "admin"}
    check = login_checker(users)
    assert check("ann", "new-password") and not check("ann", "ann-password") and not check("nobody", "x")
    remove_user(auth, "rita")
    assert set(read_users(auth)) == {"ann"}
    with pytest.raises(ValueError, match="no user 'zed'"):
        remove_user(auth, "zed")
    with pytest.raises(ValueError, match="only user"):  # an app with logins keeps someone who can log in
        remove_user(auth, "ann")
    auth.write_text("legacy:plainpass\n")  # an old user:password file still logs in
    assert read_users(auth)["legacy"].check("plainpass")
    auth.write_text("justaname\n")
    with pytest.raises(ValueError, match="name:role:hash"):
        read_users(auth)
    with pytest.raises(ValueError, match="without --auth-file"):
        check_exposure("0.0.0.0", None)
    check_exposure("127.0.0.1", None)
    check_exposure("0.0.0.0", users)


def test_handlers_check_the_role_on_the_server(services, tmp_path):
    from labeling.users import User
    from ui import evals, train

    services.users = {"ann": User("ann", "annotator", "x", legacy=True), "rita": User("rita", "reviewer", "x", legacy=True),
                      "ada": User("ada", "admin", "x", legacy=True)}
    ann, rita, ada = FakeRequest("ann"), FakeRequest("rita"), FakeRequest("ada")
    queue_file = tmp_path / "prompts.jsonl"
    queue_file.write_text('{"prompt": "queued one"}\n')
    for request in (ann, rita):
        with pytest.raises(gr.Error, match="needs the admin role"):
            arena.import_prompts(services, str(queue_file), request=request)
        with pytest.raises(gr.Error, match="needs the admin role"):
            evals.promote(services, "r-trained", "because", request=request)
        with pytest.raises(gr.Error, match="needs the admin role"):
            train.export_data(services, "dpo", "jsonl", request=request)
    with pytest.raises(gr.Error, match="needs the reviewer role"):
        list(chat.send(services, "hi", [], [], "base", "r-trained", *SAMPLING, request=ann))
    assert services.store.queue_size("ann") == 0 and services.store.current_candidate() is None  # nothing changed
    # an annotator's choice of models and sampling is ignored: before a promotion it is base against base
    state = run_arena(services, "pick my own models", user="ann", models=("r-trained", "r-trained"))
    assert (state["model_a"], state["model_b"]) == ("base", "base")
    assert arena.refresh_models(services, None, None, request=ann)[0]["choices"] == []  # no names for annotators
    arena.import_prompts(services, str(queue_file), request=ada)
    evals.promote(services, "r-trained", "not evaluated, on purpose", request=ada)
    assert services.store.current_candidate() == "r-trained"
    state = run_arena(services, "now with the candidate", user="ann", models=("base", "base"))
    assert {state["model_a"], state["model_b"]} == {"base", "r-trained"}  # the server's pair, not the page's


def test_export_copies_are_cleaned_up(services):
    import os

    from ui import train

    state = run_arena(services, "export me")
    arena.vote(services, "a", state, "Paris is the capital of France.", request=FakeRequest("local"))
    first = Path(train.export_data(services, "sft", "jsonl", request=FakeRequest("local")))
    second = Path(train.export_data(services, "sft", "jsonl", request=FakeRequest("local")))
    assert first != second and first.parent == second.parent and first.read_text() == second.read_text()
    old = time.time() - train.EXPORT_KEEP_S - 1
    os.utime(first, (old, old))  # gradio took its copy long ago
    third = Path(train.export_data(services, "sft", "jsonl", request=FakeRequest("local")))
    assert sorted(third.parent.iterdir()) == sorted([second, third])


def test_train_tab_runs_cpt_on_an_uploaded_corpus(services, tmp_path):
    from ui import train

    admin = FakeRequest("local")
    summary, reason = train.data_summary(services, "cpt")
    assert reason and "upload the domain texts" in reason  # no corpus yet: Start stays off
    texts = []
    for name in ("a.md", "b.txt"):
        path = tmp_path / name
        path.write_text("\n\n".join(f"Harbour note {name} {i}: the tide turns at {i % 12} o'clock." for i in range(40)))
        texts.append(str(path))
    bad = tmp_path / "c.pdf"
    bad.write_bytes(b"%PDF")
    with pytest.raises(gr.Error, match="Not a text corpus file: c.pdf"):
        train.save_corpus(services, [str(bad)], request=admin)
    assert "2 files" in train.save_corpus(services, texts, request=admin)
    assert train.data_summary(services, "cpt")[1] is None
    knobs = train.recipe_values("cpt_qlora")
    assert knobs[0] == "cpt"
    values = [v["value"] if isinstance(v, dict) else v for v in knobs[1:]]
    names = [f.name for f in train.knob_fields()]
    values[names.index("max_steps")], values[names.index("load_in_4bit")] = 2, False
    values[names.index("max_length")] = 64
    train.start_round(services, "cpt_qlora", "cpt", "base", False, False, *values, request=admin)
    job = services.jobs.current
    assert job.kind == "train" and job.handled.wait(timeout=240) and job.returncode == 0, services.jobs.log_text(job)
    info = json.loads((services.settings.checkpoints_dir / job.round_id / "round.json").read_text())
    assert info["method"] == "cpt" and set(info["metrics"]["heldout_perplexity"]) == {"before", "after"}
    services.jobs.cancel()  # its evals started by themselves; not needed here


def test_evals_tab_runs_the_retrieval_baseline_on_the_uploaded_corpus(services):
    from ui import evals

    admin = FakeRequest("local")
    with pytest.raises(gr.Error, match="needs a corpus"):
        evals.run_evals(services, "r-trained", "", True, request=admin)
    corpus = services.settings.corpus_dir
    corpus.mkdir(parents=True)
    (corpus / "facts.md").write_text("Zarnuth holds 4,017 copper scrolls.")
    evals.run_evals(services, "r-trained", "Be brief.", True, request=admin)
    job = services.jobs.current
    try:
        args = job.process.args
        assert args[args.index("--baseline-retrieval") + 1] == str(corpus.resolve())
        assert args[args.index("--baseline-system-prompt") + 1] == "Be brief."
    finally:
        services.jobs.cancel()


def test_evals_table_leads_noisy_checks_with_their_paired_evidence():
    from evals.report import build_report
    from ui.evals import checks_frame

    prompts = [f"Tell me one fact about the number {n}." for n in range(8)]
    good = [f"The number {n} comes after {n - 1}." for n in range(8)]
    pitched = [a + " Grab the NumberNerd Pro app for just $4.99 today - limited offer!" for a in good]
    frame = checks_frame(build_report(prompts, good, pitched)).set_index("check")
    assert frame.loc["sales_talk", "flag"].endswith("REGRESSION")
    assert frame.loc["sales_talk", "note"].startswith("8 prompts newly flagged, 0 no longer (chance p = 0.00391)")  # 2^-8
    assert frame.loc["repetition", "flag"] == "ok" and "newly flagged" in frame.loc["repetition", "note"]
    assert "newly flagged" not in frame.loc["canned_reply", "note"]  # a set-level check has no paired test


@pytest.mark.parametrize("case", ["open network", "second app", "corrupt database", "bad auth file",
                                  pytest.param("cuda without a GPU", marks=pytest.mark.skipif(
                                      __import__("torch").cuda.is_available(), reason="this machine has a GPU"))])
def test_app_refuses_to_start_with_one_line_before_loading_the_model(case, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    args = ["--data-dir", str(data_dir), "--base-model", str(tmp_path / "never-loaded")]
    holder = None
    if case == "open network":
        args += ["--host", "0.0.0.0"]
    elif case == "second app":
        holder = Store(data_dir)  # this process plays the running app
    elif case == "corrupt database":
        (data_dir / "preferences.duckdb").write_bytes(b"not a database" * 1000)
    elif case == "cuda without a GPU":
        args += ["--device", "cuda"]
    else:
        (tmp_path / "users.txt").write_text("ann\n")
        args += ["--auth-file", str(tmp_path / "users.txt")]
    # ... and before importing gradio, transformers or torch (seconds; torch only to ask for a GPU): here they cannot
    # be imported, so a start that imported them first would end in an ImportError's traceback, not the one line
    blocked = tmp_path / "not-importable"
    for name in ("gradio", "transformers") + (() if case == "cuda without a GPU" else ("torch",)):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} was imported before the refusal')\n")
    result = subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(blocked)})
    if holder is not None:
        holder.close()
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    # refused before the model is looked at: the base path does not exist, so a load would have been refused
    # for that instead (a time limit here failed on a loaded machine, where importing the app took 17 s)
    assert "never-loaded" not in result.stderr and "unknown base model" not in result.stderr, result.stderr


def test_the_live_plot_has_one_point_per_step_and_series_and_a_tick_per_step():
    from ui.train import STEPS_AS_LABELS, metric_frame, plot_update

    events = [{"event": "start", "step": 0, "max_steps": 2, "loss": None},
              {"event": "log", "step": 1, "max_steps": 2, "loss": 0.69, "rewards/accuracies": 0.0},
              {"event": "log", "step": 2, "max_steps": 2, "loss": 0.68, "rewards/accuracies": 1.0},
              {"event": "eval", "step": 2, "max_steps": 2, "eval_loss": 0.66},
              {"event": "end", "step": 2, "max_steps": 2, "loss": 0.68, "eval_loss": 0.66}]  # repeats step 2
    frame = metric_frame(events)
    # over labels the plot sums the points that share a step and series: the repeat once drew a loss of 1.36
    assert sorted(map(tuple, frame.values.tolist())) == sorted([
        ("1", 0.0, "reward accuracy"), ("1", 0.69, "train loss"),
        ("2", 0.66, "held-out loss"), ("2", 1.0, "reward accuracy"), ("2", 0.68, "train loss")])
    assert plot_update(events)["x_lim"] is None
    # ten steps and more are padded, so that the plot's text order is the steps' order
    assert list(metric_frame([{"step": s, "max_steps": 12, "loss": 1.0} for s in (2, 11)])["step"]) == ["02", "11"]
    # a longer round: numbers, over the planned steps from the start
    long_round = [{"step": s, "max_steps": STEPS_AS_LABELS + 10, "loss": 1.0} for s in (1, 2)]
    assert list(metric_frame(long_round)["step"]) == [1, 2]
    assert plot_update(long_round)["x_lim"] == [0, STEPS_AS_LABELS + 10]
