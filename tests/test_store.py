"""The DuckDB store: migrations, vote idempotency, concurrency, durability, prompts, snapshots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from formats import (
    PromptFileError, load_prompt_file, load_reference_file, manifest_path, read_manifest, write_manifest,
)
from labeling import pairs
from labeling.prompt_queue import HOLD_S, PromptHolds
from labeling.store import MIGRATIONS, Store

ROOT = Path(__file__).resolve().parent.parent
MT_BENCH = Path(__file__).resolve().parent.parent / "evals" / "prompts" / "mt_bench_questions.jsonl"
PROMPT = [{"role": "user", "content": "Name a primary colour."}]
PARAMS = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "seed": 1, "system_prompt": ""}


def add(store: Store, messages=PROMPT, a="Red.", b="Blue is one.", **kw) -> str:
    args = dict(model_a="base", model_b="round-1", adapter_a=None, adapter_b="abc123", params=PARAMS,
                annotator="ann")
    args.update(kw)
    return store.add_comparison(messages, a, b, **args)


@pytest.fixture
def store(data_dir):
    with Store(data_dir) as s:
        yield s


def count(store: Store, table: str) -> int:
    return store.stats()[table]  # "votes" or "comparisons"


# ---- migrations ----


def test_migrations_run_once_and_reopen_is_idempotent(data_dir):
    with Store(data_dir) as store:
        cid = add(store)
    assert (data_dir / "preferences.duckdb").exists()
    with Store(data_dir) as store:
        versions = store._db.cursor().execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert versions == [(i, m.__name__) for i, m in enumerate(MIGRATIONS, start=1)]
        assert store.get_comparison(cid)["answer_a"] == "Red."


def test_read_only_store_cannot_write_and_needs_an_existing_db(data_dir):
    with pytest.raises(FileNotFoundError):
        Store(data_dir, read_only=True)
    Store(data_dir).close()
    with Store(data_dir, read_only=True) as store:
        assert store.stats()["votes"] == 0
        with pytest.raises(RuntimeError, match="read-only"):
            add(store)


# ---- comparisons and votes ----


def test_comparison_round_trip(store):
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello.", "metadata": {"ui": 1}},
               {"role": "user", "content": [{"type": "text", "text": "2+2?"}]}]  # Gradio 6's normalised form
    cid = add(store, history, "4", "Four.")
    row = store.get_comparison(cid)
    assert row["messages"][2] == {"role": "assistant", "content": "Hello."}  # UI-only keys dropped
    assert row["messages"][3] == {"role": "user", "content": "2+2?"}
    assert row["params"] == PARAMS and row["model_b"] == "round-1" and row["adapter_a"] is None
    assert store.get_comparison("nope") is None


@pytest.mark.parametrize("messages", [[], [{"role": "user"}], [{"role": "bot", "content": "x"}],
                                      [{"role": "user", "content": [{"type": "file", "file": {}}]}],
                                      [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])
def test_add_comparison_rejects_bad_messages(store, messages):
    with pytest.raises(ValueError):
        add(store, messages)


def test_add_comparison_rejects_unknown_prompt_and_empty_annotator(store):
    with pytest.raises(ValueError, match="unknown prompt"):
        add(store, prompt_id=999)
    with pytest.raises(ValueError, match="annotator"):
        add(store, annotator="  ")
    assert count(store, "comparisons") == 0  # the failed transactions left nothing behind


def test_vote_is_recorded_and_better_answer_normalised(store):
    cid = add(store)
    result = store.record_vote(cid, "ann", "a", better_answer="   ", time_spent_s=3.5)
    assert result.created
    [row] = store.labeled_rows()
    assert row["vote_id"] == result.vote_id and row["better_answer"] is None and row["choice"] == "a"
    assert row["messages"] == PROMPT and row["answer_b"] == "Blue is one."


def test_double_vote_records_one_row(store):
    cid = add(store)
    first = store.record_vote(cid, "ann", "a")
    second = store.record_vote(cid, "ann", "b")  # double-click, or a changed mind after the fact
    assert (second.vote_id, second.created) == (first.vote_id, False)
    assert count(store, "votes") == 1 and store.labeled_rows()[0]["choice"] == "a"


def test_replayed_idempotency_key_records_one_row(store):
    cids = [add(store), add(store)]
    first = store.record_vote(cids[0], "ann", "tie", idempotency_key="req-1")
    replay = store.record_vote(cids[1], "ann", "tie", idempotency_key="req-1")
    assert (replay.vote_id, replay.created) == (first.vote_id, False)
    assert count(store, "votes") == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"comparison_id": "missing"}, "must be the id /arena_generate returned, got 'missing'"),
    ({"comparison_id": 5}, "must be the id /arena_generate returned, got 5"),  # DuckDB's own error named another id
    ({"comparison_id": "1" * 100_000}, "got '1111"),
    ({"comparison_id": "00000000-0000-4000-8000-000000000000"}, "unknown comparison"),
    ({"choice": "left"}, "choice must be one of"),
    ({"annotator": ""}, "annotator"),
    ({"better_answer": "x" * 20_001}, "20000"),
    ({"time_spent_s": -1}, "time_spent_s"),
])
def test_bad_votes_raise_value_error(store, kwargs, message):
    args = {"comparison_id": add(store), "annotator": "ann", "choice": "a"} | kwargs
    with pytest.raises(ValueError, match=message):
        store.record_vote(**args)
    assert count(store, "votes") == 0


def test_concurrent_votes_from_20_threads(store):
    comparisons = [[add(store, annotator=f"t{t}") for _ in range(10)] for t in range(20)]
    start = threading.Barrier(20)
    errors = []

    def label(thread: int) -> None:
        start.wait()  # all threads hit the store at once
        try:
            for cid in comparisons[thread]:
                assert store.record_vote(cid, f"t{thread}", "ab"[thread % 2]).created
                store.annotator_progress(f"t{thread}")  # interleave reads on per-thread cursors
        except Exception as e:  # surfaced below; an assert inside a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=label, args=(t,)) for t in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(store, "votes") == 200
    assert store.annotator_progress("t3") == {"today": 10, "total": 10}



def test_votes_arriving_together_share_one_transaction_and_a_bad_one_fails_alone(store):
    """Group commit: votes cast while a transaction runs go together in the next one; each caller gets
    its own outcome (a double click in the same batch is the earlier vote, an unknown id fails alone)."""
    ids = [add(store, annotator="setup") for _ in range(5)]
    unknown = "00000000-0000-4000-8000-000000000000"
    batches, queued_up = [], threading.Event()
    write_batch = store._write_vote_batch

    def first_waits_for_the_rest(requests):
        batches.append([r.comparison_id for r in requests])
        if len(batches) == 1:  # the rest arrive while this transaction runs
            assert queued_up.wait(timeout=60), "the other voters never queued"
        return write_batch(requests)

    store._write_vote_batch = first_waits_for_the_rest
    outcomes, lock = {}, threading.Lock()

    def cast(name: str, comparison_id: str, annotator: str) -> None:
        try:
            outcome = store.record_vote(comparison_id, annotator, "a")
        except ValueError as exc:
            outcome = exc
        with lock:
            outcomes[name] = outcome

    first = threading.Thread(target=cast, args=("first", ids[0], "ann0"))
    first.start()
    while not batches:  # the first vote's transaction has started
        first.join(timeout=0.01)
    casts = [(f"v{i}", cid, f"ann{i}") for i, cid in enumerate(ids[1:], start=1)]
    casts += [("unknown", unknown, "ann1"), ("double click", ids[1], "ann1")]
    threads = [threading.Thread(target=cast, args=c) for c in casts]
    for thread in threads:
        thread.start()
    while len(store._votes._pending) < len(casts):  # every later vote is waiting for the next batch
        threads[0].join(timeout=0.01)
    queued_up.set()
    for thread in [first, *threads]:
        thread.join(timeout=60)

    assert [len(b) for b in batches] == [1, len(casts)]
    assert isinstance(outcomes["unknown"], ValueError) and "unknown comparison" in str(outcomes["unknown"])
    assert all(outcomes[f"v{i}"].created for i in range(1, 5)) and outcomes["first"].created
    assert not outcomes["double click"].created and outcomes["double click"].vote_id == outcomes["v1"].vote_id
    assert count(store, "votes") == 5


DURABILITY_CHILD = """
import sys
from labeling.store import Store
store = Store(sys.argv[1])
prompt = [{"role": "user", "content": "q"}]
for i in range(100_000):  # runs until the parent kills it
    cid = store.add_comparison(prompt, "x", "y", "base", "r1", None, None, {}, "ann")
    vote = store.record_vote(cid, "ann", "a")
    print(vote.vote_id, flush=True)
"""


def test_acknowledged_votes_survive_sigkill(data_dir):
    child = subprocess.Popen([sys.executable, "-c", DURABILITY_CHILD, str(data_dir)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        while len(acked) < 25:
            line = child.stdout.readline()
            assert line, "child exited before acknowledging enough votes"
            acked.append(line.strip())
        os.kill(child.pid, signal.SIGKILL)  # mid-loop: the next vote is likely half-written
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    with Store(data_dir) as store:
        stored = {r["vote_id"] for r in store.labeled_rows()}
    assert set(acked) <= stored


LOCKED_CHILD = """
import sys
from labeling.store import Store, StoreLocked
try:
    Store(sys.argv[1], read_only=True).close()
    print("opened")
except StoreLocked as e:
    print("locked:", e)
"""


def test_cli_side_open_fails_cleanly_while_another_process_holds_the_db_and_works_once_it_closes(data_dir):
    def open_from_another_process() -> str:
        out = subprocess.run([sys.executable, "-c", LOCKED_CHILD, str(data_dir)], cwd=ROOT, capture_output=True,
                             text=True)
        assert "Traceback" not in out.stderr, out.stderr
        return out.stdout.strip()

    store = Store(data_dir)
    store.record_vote(add(store), "ann", "a")
    message = open_from_another_process()
    assert message.startswith("locked:") and str(data_dir / "preferences.duckdb") in message
    assert "in use by another process" in message
    store.close()
    assert open_from_another_process() == "opened"


# ---- prompts ----


def test_mt_bench_prompts_import_idempotently(store):
    rows = load_prompt_file(MT_BENCH)
    assert len(rows) == 80 and rows[0]["category"] == "writing"
    assert rows[0]["prompt"].startswith("Compose an engaging travel blog post")
    assert store.import_prompts(rows, source="mt_bench") == 80
    assert store.import_prompts(rows, source="mt_bench") == 0
    assert store.queue_size() == 80


def test_prompt_files_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "Hello?"}\n\n{"prompt": "Why?", "category": "misc", "id": "q7"}\n')
    assert [(r["prompt"], r["id"]) for r in load_prompt_file(jsonl)] == [("Hello?", "1"), ("Why?", "q7")]
    table = tmp_path / "p.csv"
    # a spreadsheet's BOM, a quoted field over two lines, a reference column
    table.write_bytes('\ufeffprompt,category,reference\n"Say hi,\nplease",greet,Hi!\nWhy?,,\n'.encode())
    assert load_prompt_file(table) == [
        {"prompt": "Say hi,\nplease", "id": "1", "category": "greet", "reference": "Hi!"},
        {"prompt": "Why?", "id": "2", "category": None, "reference": None},
    ]


def test_mt_bench_rows_carry_question_id_and_first_turn_reference(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 101, "category": "math", "turns": ["  First?  ", "Second?"], '
                    '"reference": ["R1", "R2"]}\n')
    assert load_prompt_file(path) == [{"prompt": "First?", "id": "101", "category": "math", "reference": "R1"}]


def test_reference_files_key_by_id_and_prompt(tmp_path):
    path = tmp_path / "refs.jsonl"
    path.write_text('{"question_id": 101, "choices": [{"turns": ["Second place."]}]}\n'
                    '{"prompt": "Hi? ", "reference": "Hello."}\n{"prompt": "No reference"}\n')
    assert load_reference_file(path) == {"101": "Second place.", "Hi?": "Hello."}
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(PromptFileError, match="no references"):
        load_reference_file(path)


@pytest.mark.parametrize("name, text, message", [
    ("bad.jsonl", '{"prompt": "ok"}\n{not json\n', ":2: not valid JSON"),
    ("bad.jsonl", '{"question": "x"}\n', ':1: no "prompt"'),
    ("bad.jsonl", '["a list"]\n', ":1: expected a JSON object"),
    ("bad.csv", "question\nx\n", "'prompt' column"),
    ("bad.txt", "x", "unsupported"),
    ("empty.jsonl", "\n", "holds no prompts"),
    ("latin1.jsonl", b'{"prompt": "caf\xe9"}\n', "not UTF-8"),
])
def test_bad_prompt_files_raise_value_error(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(PromptFileError, match=message) as caught:
        load_prompt_file(path)
    assert isinstance(caught.value, ValueError) and str(path) in str(caught.value)  # the Arena and CLI catch ValueError
    with pytest.raises(PromptFileError, match="not found"):
        load_prompt_file(tmp_path / "missing.jsonl")


def test_next_prompt_serves_least_labeled_unseen_prompts(store):
    store.import_prompts([{"prompt": "one"}, {"prompt": "two"}, {"prompt": "three"}], source="t")
    first = store.next_prompt("x")
    assert first["prompt"] == "one" and first["source"] == "t"
    store.record_vote(add(store, first["messages"], annotator="x", prompt_id=first["id"]), "x", "a")
    assert store.next_prompt("x")["prompt"] == "two"  # x has labeled "one"
    assert store.next_prompt("y")["prompt"] == "three"  # "one" already has a label, "two" is x's now
    skipped = add(store, [{"role": "user", "content": "two"}], annotator="x", prompt_id=store.next_prompt("x")["id"])
    assert skipped and store.next_prompt("x")["prompt"] == "three"  # a generated-but-skipped prompt is not re-served
    assert store.queue_size("x") == 1 and store.queue_size() == 2
    assert store.annotator_progress("x") == {"today": 1, "total": 1}


def test_annotators_asking_at_once_get_different_prompts_and_a_short_queue_turns_nobody_away(store):
    clock = [0.0]
    store.holds = PromptHolds(clock=lambda: clock[0])
    store.import_prompts([{"prompt": p} for p in ("one", "two", "three")], source="t")
    barrier = threading.Barrier(3)

    def ask(annotator):
        barrier.wait()  # all three ask at the same moment
        return store.next_prompt(annotator)["prompt"]

    with ThreadPoolExecutor(3) as pool:
        served = dict(zip("abc", pool.map(ask, "abc")))
    assert sorted(served.values()) == ["one", "three", "two"], served  # nobody does another's work twice
    assert store.next_prompt("a")["prompt"] == served["a"]  # asking again keeps your own (its prefetch)
    assert store.next_prompt("d")["prompt"] == "one"  # all held: the most useful one, not "the queue is empty"
    assert store.queue_size("d") == 3  # held prompts still count as waiting
    clock[0] += HOLD_S / 2
    assert store.next_prompt("a")["prompt"] == served["a"]  # a is still at it: their hold starts again
    clock[0] += HOLD_S / 2 + 1  # b and c left: their holds lapse, and their prompts are served again
    assert store.next_prompt("e")["prompt"] == min(served["b"], served["c"], key=["one", "two", "three"].index)
    holds = PromptHolds()
    holds.hold("a", 1)
    holds.hold("a", 2)  # taking another prompt frees the one before
    assert holds.held_by_others("b") == [2] and holds.held_by("a") == 2 and holds.held_by_others("a") == []
    first = store.next_prompt("f")
    store.record_vote(add(store, first["messages"], prompt_id=first["id"], annotator="f"), "f", "a")
    assert store.holds.held_by("f") is None  # voted: what f held is done, whoever else asks next


# ---- snapshots, promotions, stats ----


def test_snapshot_is_named_by_content_and_reused(store, tmp_path):
    for choice in ("a", "b"):
        store.record_vote(add(store), "ann", choice)
    path = store.write_snapshot("dpo", tmp_path / "snaps")
    assert path.name.startswith("dpo-") and path.suffix == ".jsonl" and len(path.stem) == len("dpo-") + 12
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["chosen"][0]["content"] for r in rows] == ["Red.", "Blue is one."]
    mtime = path.stat().st_mtime_ns
    assert store.write_snapshot("dpo", tmp_path / "snaps") == path and path.stat().st_mtime_ns == mtime
    parquet = store.write_snapshot("dpo", tmp_path / "snaps", fmt="parquet")
    assert parquet.stem == path.stem  # same data, same hash, whatever the format
    store.record_vote(add(store), "ann", "a")
    assert store.write_snapshot("dpo", tmp_path / "snaps") != path
    assert not [p for p in (tmp_path / "snaps").iterdir() if p.name.startswith(".")]  # no temp files left


def test_promotions(store):
    assert store.current_candidate() is None
    store.record_promotion("round-1", by="admin", reason="", overridden=False)
    with pytest.raises(ValueError, match="reason"):
        store.record_promotion("round-2", by="admin", reason=" ", overridden=True)
    store.record_promotion("round-2", by="admin", reason="canned flag is a false positive", overridden=True)
    assert store.current_candidate() == "round-2"
    assert [(p["round_id"], p["overridden"]) for p in store.promotions()] == [("round-1", False), ("round-2", True)]


def test_stats_and_model_pairs(store):
    # x and y label the same three comparisons: agree, disagree, agree -> kappa 0.4, alpha 4/9
    for x_choice, y_choice in (("a", "a"), ("a", "b"), ("b", "b")):
        shared = add(store)
        store.record_vote(shared, "x", x_choice)
        store.record_vote(shared, "y", y_choice)
    store.record_vote(add(store, model_a="round-1", model_b="base"), "x", "tie")
    stats = store.stats()
    assert stats["votes"] == 7 and stats["comparisons"] == 4 and stats["prompts"] == 0
    assert stats["annotators"] == {"x": 4, "y": 3} and stats["choices"] == {"a": 3, "b": 3, "tie": 1}
    assert stats["position_bias"] == {"decisive": 6, "left_wins": 3, "left_share": 0.5}
    [kappa] = stats["agreement"]["cohen_kappa"]
    assert kappa["annotators"] == ["x", "y"] and kappa["n"] == 3 and kappa["kappa"] == pytest.approx(0.4)
    assert stats["agreement"]["comparisons"] == 3
    assert stats["agreement"]["krippendorff_alpha"] == pytest.approx(4 / 9)
    # `python -m labeling stats --json` prints it: every value must come back from JSON unchanged
    assert json.loads(json.dumps(stats)) == stats
    assert store.vote_pairs_by_model()[-1] == {"model_a": "round-1", "model_b": "base", "choice": "tie"}


# ---- the training-data report (the Train tab asks on every page load) ----


@pytest.fixture
def lint_calls(monkeypatch) -> list[int]:
    """Counts the lint runs behind Store.training_data_report()."""
    calls = []

    def counting_lint(dpo_rows, *args, **kwargs):
        calls.append(len(dpo_rows))
        return real_lint(dpo_rows, *args, **kwargs)

    real_lint = pairs.lint
    monkeypatch.setattr(pairs, "lint", counting_lint)
    return calls


def test_training_data_report_counts_rows_and_lints_them(store, lint_calls):
    store.record_vote(add(store), "ann", "a")
    store.record_vote(add(store, a="Same.", b="Same."), "ann", "b")  # no preference signal: no pair
    store.record_vote(add(store), "ann", "tie")
    report = store.training_data_report()
    assert (report.votes, report.dpo_rows, report.sft_rows) == (3, 1, 1)
    assert report.build_report["comparisons"] == 3 and report.build_report["rows"] == 1
    assert report.lint.rows == 1 and report.lint.ok and lint_calls == [1]


def test_training_data_report_is_cached_until_a_write(store, lint_calls):
    store.record_vote(add(store), "ann", "a")
    first = store.training_data_report()
    assert store.training_data_report() is first and lint_calls == [1]  # no new votes: no new lint
    store.record_vote(add(store, a="Dear, how can I help you?", b="Red."), "ann", "a")
    second = store.training_data_report()
    assert lint_calls == [1, 2] and second.votes == 2 and second.dpo_rows == 2
    assert [i.code for i in second.lint.issues] == ["canned_chosen"]  # the new vote's pair was linted
    add(store)  # any write invalidates, even one that adds no vote
    assert store.training_data_report() is not second and lint_calls == [1, 2, 2]


def test_training_data_report_computed_once_for_concurrent_callers(store, lint_calls, monkeypatch):
    real = pairs.lint  # the counting wrapper, made slow so the callers overlap
    monkeypatch.setattr(pairs, "lint", lambda *args: (threading.Event().wait(0.3), real(*args))[1])
    store.record_vote(add(store), "ann", "a")
    start = threading.Barrier(4)
    results = []

    def ask():
        start.wait()
        results.append(store.training_data_report())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lint_calls == [1] and len({id(r) for r in results}) == 1


# ---- training snapshots: the lint filters what a round trains on ----

CUT_A = {**PARAMS, "cut_off": [True, False], "trimmed": [False, False]}  # as the Arena records a cut answer
PITCH = "Red. Buy our premium paint set today for only $9.99 - 50% off, limited time offer at www.paints.com"
LONG_A = "Red is a primary colour in the traditional painters' model, alongside yellow and blue, and mixing it"


def labeled(store: Store) -> dict[str, str]:
    """Four votes: clean, a pitch chosen, a cut-off chosen answer (Arena record), a cut-off rejected one."""
    cut_b = {**PARAMS, "cut_off": [False, True], "trimmed": [False, False]}
    cids = {"clean": add(store), "pitch": add(store, a=PITCH), "cut_chosen": add(store, a=LONG_A, params=CUT_A),
            "cut_rejected": add(store, b=LONG_A + ".", params=cut_b)}  # reads complete; the record says cut
    for cid in cids.values():
        store.record_vote(cid, "ann", "a")
    return cids


def test_training_snapshot_leaves_out_flagged_and_cut_off_rows_and_writes_a_manifest(store, tmp_path):
    cids = labeled(store)
    snapshot = store.training_snapshot("dpo", tmp_path / "snaps")
    rows = [json.loads(line) for line in snapshot.path.read_text().splitlines()]
    assert snapshot.rows == len(rows) == 1 and rows[0]["chosen"][0]["content"] == "Red."
    assert [(e["comparison_id"], e["code"]) for e in snapshot.excluded] == [
        (cids["pitch"], "sales_chosen"), (cids["cut_chosen"], "truncated_chosen"),
        (cids["cut_rejected"], "truncated_rejected")]
    assert snapshot.excluded[0]["prompt"] == "Name a primary colour." and snapshot.excluded[0]["answer"] == PITCH
    assert snapshot.path.name.startswith("dpo-") and len(snapshot.path.stem) == len("dpo-") + 12
    manifest = read_manifest(snapshot.path)
    assert manifest_path(snapshot.path).name == snapshot.path.name + ".manifest.json"
    assert {k: manifest[k] for k in ("method", "rows", "include_flagged", "include_cut_off", "excluded")} == {
        "method": "dpo", "rows": 1, "include_flagged": False, "include_cut_off": False,
        "excluded": snapshot.excluded}
    assert not [p for p in (tmp_path / "snaps").iterdir() if p.name.startswith(".")]  # no temp files left
    # SFT is filtered by the same lint: the rejected side's cut does not matter to it
    sft = store.training_snapshot("sft", tmp_path / "snaps")
    assert sft.rows == 2 and [e["code"] for e in sft.excluded] == ["sales_chosen", "truncated_chosen"]
    assert read_manifest(sft.path)["method"] == "sft"


def test_training_snapshot_includes_flagged_or_cut_off_rows_when_asked(store, tmp_path):
    labeled(store)
    default = store.training_snapshot("dpo", tmp_path)
    flagged = store.training_snapshot("dpo", tmp_path, include_flagged=True)
    assert flagged.rows == 2 and [e["code"] for e in flagged.excluded] == ["truncated_chosen", "truncated_rejected"]
    everything = store.training_snapshot("dpo", tmp_path, include_flagged=True, include_cut_off=True, fmt="parquet")
    assert everything.rows == 4 and everything.excluded == [] and everything.path.suffix == ".parquet"
    assert read_manifest(everything.path)["include_cut_off"] is True
    assert len({default.path.stem, flagged.path.stem, everything.path.stem}) == 3  # named by their rows
    again = store.training_snapshot("dpo", tmp_path)
    assert again.path == default.path and read_manifest(default.path)["include_flagged"] is False


def test_training_snapshot_raises_when_nothing_is_left(store, tmp_path):
    with pytest.raises(ValueError, match="label some comparisons"):
        store.training_snapshot("dpo", tmp_path / "snaps")
    store.record_vote(add(store, a=PITCH), "ann", "a")
    with pytest.raises(ValueError, match="1 flagged by the data lint"):
        store.training_snapshot("sft", tmp_path / "snaps")
    assert not (tmp_path / "snaps").exists()  # nothing written
    assert store.training_snapshot("sft", tmp_path, include_flagged=True).rows == 1
    with pytest.raises(ValueError, match="unknown format"):
        store.training_snapshot("ppo", tmp_path / "snaps")


def test_manifest_round_trip_and_missing_or_broken_manifests(tmp_path):
    snapshot = tmp_path / "dpo-0123456789ab.jsonl"
    assert read_manifest(snapshot) is None  # an export or an older snapshot has none
    write_manifest(snapshot, {"method": "dpo", "excluded": [{"prompt": "Café?"}]})
    assert read_manifest(snapshot) == {"method": "dpo", "excluded": [{"prompt": "Café?"}]}
    manifest_path(snapshot).write_text("{half")
    assert read_manifest(snapshot) is None
    manifest_path(snapshot).write_text("[1, 2]")
    assert read_manifest(snapshot) is None


def test_training_data_report_counts_what_a_round_leaves_out(store):
    cids = labeled(store)
    report = store.training_data_report()
    assert (report.dpo_rows, report.usable_dpo, report.sft_rows, report.usable_sft) == (4, 1, 4, 2)
    assert [(e["comparison_id"], e["methods"]) for e in report.excluded] == [
        (cids["pitch"], ["dpo", "sft"]), (cids["cut_chosen"], ["dpo", "sft"]), (cids["cut_rejected"], ["dpo"])]
    frame = report.lint.to_frame_rows()
    assert {r["comparison_id"] for r in frame} == set(cids.values()) - {cids["clean"]}
    assert all(r["prompt"] == "Name a primary colour." for r in frame)


def test_invisible_characters_do_not_make_a_new_prompt_or_an_edit(store, tmp_path):
    """A zero-width space, a direction mark or a compatibility form is the same text to a reader."""
    from labeling import pairs

    assert store.import_prompts([{"prompt": "What is DNS?"}], source="a") == 1
    assert store.import_prompts([{"prompt": "What is\u200b DNS?\u200e"}, {"prompt": "What is DNS？"}], source="b") == 0
    cid = store.add_comparison([{"role": "user", "content": "hi"}], "Hello there.", "Hi.", "base", "base",
                               None, None, {}, "ann")
    store.record_vote(cid, "ann", "a", better_answer="Hello\u200b there.")  # the original, plus U+200B
    dpo_rows, _ = pairs.build("dpo", store.labeled_rows())
    assert len(dpo_rows) == 1 and dpo_rows[0]["rejected"][0]["content"] == "Hi."  # no chosen≈rejected pair


def test_malformed_prompt_files_get_one_clear_error(tmp_path):
    from formats import PromptFileError, load_prompt_file

    cases = {"list.jsonl": "[1]\n", "string.jsonl": '"x"\n', "number.jsonl": "5\n",
             "huge-field.csv": "prompt\n" + "x" * 200_000 + "\n",
             "too-long.jsonl": '{"prompt": "' + "x" * 9000 + '"}\n'}  # would block the queue: the Arena refuses it
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "utf16.jsonl").write_bytes('{"prompt": "hi"}\n'.encode("utf-16"))
    (tmp_path / "bad.jsonl").write_bytes(b'{"prompt": "\xff\xfe hi"}\n')
    for path in sorted(tmp_path.iterdir()):
        with pytest.raises(PromptFileError, match=path.name):
            load_prompt_file(path)
    with pytest.raises(PromptFileError, match="UTF-16"):
        load_prompt_file(tmp_path / "utf16.jsonl")


def test_the_double_labeled_share_serves_someone_elses_comparison(store):
    store.import_prompts([{"prompt": f"question {i}"} for i in range(40)], source="t")
    first = store.next_prompt("ann")
    made = store.add_comparison(first["messages"], "a1", "b1", "base", "base", None, None, {}, "ann",
                                prompt_id=first["id"])
    assert store.next_second_label("bob", 1.0) is None  # not voted yet: nothing to agree with
    store.record_vote(made, "ann", "a")
    assert store.next_second_label("ann", 1.0) is None  # never your own
    assert store.next_second_label("bob", 1.0)["id"] == made
    assert store.next_second_label("bob", 0.0) is None
    assert store.next_second_label("cid", 1.0) is None  # bob holds it: one second vote is enough
    assert store.next_second_label("bob", 1.0)["id"] == made  # asking again: still bob's
    doubled = [p["id"] for p in store._db.rows("SELECT id FROM prompts")
               if (p["id"] * 2654435761) % 1000 < 100]
    assert 1 <= len(doubled) <= 12  # about a tenth of 40 prompts at the default share
    store.record_vote(made, "bob", "b")
    assert store.next_second_label("cid", 1.0) is None  # two labels are enough


def test_annotator_table_flags_position_bias_and_measures_kappa():
    from labeling.agreement import annotator_table

    rows = [{"comparison_id": f"c{i}", "annotator": "lefty", "choice": "a", "time_spent_s": 2.0} for i in range(10)]
    rows += [{"comparison_id": f"c{i}", "annotator": "fair", "choice": "ab"[i % 2], "time_spent_s": 4.0 + i}
             for i in range(10)]
    table = {r["annotator"]: r for r in annotator_table(rows)}
    assert table["lefty"]["position_bias"] and table["lefty"]["left_p"] == pytest.approx(2 / 1024)
    assert not table["fair"]["position_bias"] and table["fair"]["left_share"] == 0.5
    assert table["fair"]["median_s"] == 9.0 and table["lefty"]["shared"] == 10
    assert table["lefty"]["kappa"] == 0.0  # agrees only as often as chance (lefty always says a)
