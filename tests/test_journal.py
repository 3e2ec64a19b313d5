"""The vote journal: a lost database comes back from it once, undo is journaled, and the CLI reads it
while the app holds the database (labeling/journal.py, Store.restore_from_journal)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from labeling import journal
from labeling.__main__ import main as labeling_cli
from labeling.store import DB_NAME, Store
from tests.conftest import ROOT

QUESTIONS = [f"question {i}: what is {i} plus {i}?" for i in range(6)]


def fill(store: Store) -> list[str]:
    """Prompts, comparisons (half from the queue), a vote on each, a replayed vote and a promotion."""
    store.import_prompts([{"prompt": q} for q in QUESTIONS[:3]], source="queue")
    ids = []
    for i, question in enumerate(QUESTIONS):
        prompt = store.next_prompt("ann") if i < 3 else None
        ids.append(store.add_comparison([{"role": "user", "content": question}], f"good {i}", f"bad {i}", "base",
                                        "r1", None, "fp", {"seed": i}, "ann", prompt_id=prompt and prompt["id"]))
        store.record_vote(ids[-1], "ann" if i % 2 else "bob", "a", idempotency_key=f"{ids[-1]}:x")
    assert not store.record_vote(ids[0], "bob", "b", idempotency_key=f"{ids[0]}:x").created  # journaled twice
    store.record_promotion("r1", "admin", "", False, adapter_fingerprint="fp")
    return ids


def content(store: Store) -> dict:
    """Everything a restore must bring back, by value (prompt ids are allowed to change)."""
    votes = sorted((r["vote_id"], r["comparison_id"], r["annotator"], r["choice"], r["messages"][0]["content"],
                    r["created_at"]) for r in store.labeled_rows())
    comparisons = store._db.rows("""SELECT c.id, p.content_hash FROM comparisons c
                                    LEFT JOIN prompts p ON p.id = c.prompt_id ORDER BY c.id""")
    promotions = [(p["round_id"], p["promoted_by"], p["created_at"]) for p in store.promotions()]
    return {"votes": votes, "comparisons": comparisons, "promotions": promotions,
            "prompts": store.stats()["prompts"]}


def lose_db(data_dir: Path) -> None:
    for path in data_dir.glob(DB_NAME + "*"):  # the file and its WAL
        path.unlink()


def test_a_lost_db_comes_back_from_the_journal_every_vote_once_and_twice_changes_nothing(data_dir, tmp_path):
    backup = tmp_path / "backup"
    with Store(data_dir, journal_dir=backup) as store:
        fill(store)
        before = content(store)
        assert store.restore_from_journal(backup).get("votes", 0) == 0  # into the DB that has them all: a no-op
        assert content(store) == before
    assert len(before["votes"]) == 6 and sum(1 for c in before["comparisons"] if c["content_hash"]) == 3
    assert len(journal.segments(backup)) == 1

    lose_db(data_dir)
    with Store(data_dir, journal_dir=backup) as store:
        assert store.is_empty()
        found = store.restore_from_journal(backup)
        assert (found["prompts"], found["comparisons"], found["votes"], found["promotions"]) == (3, 6, 6, 1)
        assert content(store) == before  # same vote ids, choices, times; comparisons keep their prompts
        again = store.restore_from_journal(backup)
        assert not any(again.get(k) for k in ("prompts", "comparisons", "votes", "promotions"))
        assert content(store) == before
        assert store.current_candidate() == "r1"
        assert not store.journal_missing()  # the journal it came from lacks nothing
        store.import_prompts([{"prompt": "a new one"}], source="later")  # the prompt id sequence still works

    lose_db(data_dir)
    with Store(data_dir) as store:  # a DB that already has some rows, under other ids
        store.import_prompts([{"prompt": "unrelated"}, {"prompt": QUESTIONS[1]}], source="other")
        store.restore_from_journal(backup)
        assert content(store) == {**before, "prompts": 5}  # + "a new one" (journaled) + "unrelated";
        # each comparison found its prompt by content, under its new id


def test_a_torn_last_line_is_skipped_and_a_new_process_writes_its_own_segment(data_dir, tmp_path):
    backup = tmp_path / "backup"
    with Store(data_dir, journal_dir=backup) as store:
        fill(store)
    segment = journal.segments(backup)[0]
    with segment.open("ab") as out:
        out.write(b'{"type": "vote", "id": "half-writ')  # kill -9 in the middle of a write
    with Store(data_dir, journal_dir=backup) as store:
        store.record_vote(store.add_comparison([{"role": "user", "content": "more"}], "x", "y", "base", "base",
                                               None, None, {}, "ann"), "ann", "b")
    assert len(journal.segments(backup)) == 2 and segment.read_bytes().endswith(b"half-writ")  # never rewritten
    lose_db(data_dir)
    with Store(data_dir) as store:
        found = store.restore_from_journal(backup)
        assert found["unreadable"] == 1 and found["votes"] == 7


def test_an_undone_vote_stays_gone_after_restore_and_from_the_export(data_dir, tmp_path):
    backup = tmp_path / "backup"
    with Store(data_dir, journal_dir=backup) as store:
        ids = fill(store)
        store.undo_vote(ids[1], "ann")  # gone for good
        store.undo_vote(ids[2], "bob")
        store.record_vote(ids[2], "bob", "b")  # cast again, the other way
        with pytest.raises(ValueError, match="no vote on comparison"):
            store.undo_vote(ids[3], "bob")  # someone else's vote (ann cast it)
        before = content(store)
        with store._db.write() as db:  # ann's vote on ids[3] was cast 6 minutes ago
            db.execute("UPDATE votes SET created_at = created_at - INTERVAL 6 MINUTE WHERE comparison_id = ?",
                       [ids[3]])
        with pytest.raises(ValueError, match="within 5 minutes"):
            store.undo_vote(ids[3], "ann")
    lose_db(data_dir)
    with Store(data_dir) as store:
        store.restore_from_journal(backup)
        assert content(store) == before
        choices = {r["comparison_id"]: r["choice"] for r in store.labeled_rows()}
    assert ids[1] not in choices and choices[ids[2]] == "b" and len(choices) == 5
    out = tmp_path / "pairs.jsonl"
    assert labeling_cli(["export", "--data-dir", str(data_dir), "--format", "dpo", "--out", str(out)]) == 0
    prompts = [json.loads(line)["prompt"][0]["content"] for line in out.read_text().splitlines()]
    assert sorted(prompts) == sorted(QUESTIONS[:1] + QUESTIONS[2:])
    assert [json.loads(line)["chosen"][0]["content"] for line in out.read_text().splitlines()
            if QUESTIONS[2] in line] == ["bad 2"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labeling", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_cli_reads_the_journal_while_another_process_holds_the_db(data_dir, tmp_path):
    backup = tmp_path / "backup"
    out = tmp_path / "pairs.jsonl"
    with Store(data_dir, journal_dir=backup) as store:  # this process now holds the file, as the app would
        fill(store)
        export = run_cli("export", "--data-dir", str(data_dir), "--format", "dpo", "--out", str(out),
                         "--sync-dir", str(backup))
        stats = run_cli("stats", "--data-dir", str(data_dir), "--sync-dir", str(backup), "--json")
        without = run_cli("stats", "--data-dir", str(data_dir))  # the default journal dir has nothing
        restore = run_cli("restore", "--from", str(backup), "--data-dir", str(data_dir))
    assert export.returncode == 0, export.stderr
    assert "read the journal in" in export.stderr and "newest record" in export.stderr
    assert len(out.read_text().splitlines()) == 6
    assert stats.returncode == 0 and json.loads(stats.stdout)["votes"] == 6, stats.stderr
    assert without.returncode == 2 and "no journal in" in without.stderr
    assert restore.returncode == 2 and "in use" in restore.stderr and len(restore.stderr.splitlines()) == 1

    lose_db(data_dir)
    restore = run_cli("restore", "--from", str(backup), "--data-dir", str(data_dir))
    assert restore.returncode == 0, restore.stderr
    assert "6 votes" in restore.stdout and "journaled" in restore.stdout  # into data_dir/journal as well
    with Store(data_dir) as store:
        assert len(store.labeled_rows()) == 6
        assert store.restore_from_journal(journal.default_dir(data_dir)).get("votes", 0) == 0


# ---- the real app: votes through gradio_client, the CLI while it runs, a restart on a lost DB ----------


def make_comparisons(data_dir: Path, n: int) -> list[str]:
    """Made before the app starts and before there is a journal: the app journals them at start."""
    with Store(data_dir) as store:
        return [store.add_comparison([{"role": "user", "content": QUESTIONS[i]}], f"answer a {i}",
                                     f"answer b {i}", "base", "base", None, None, {"seed": i}, "setup")
                for i in range(n)]


@contextlib.contextmanager
def serving(tmp_path: Path, model_dir: Path, data_dir: Path, sync_dir: Path, name: str):
    """The app on `model_dir` with a sync dir, logging to <name>.log: (url, log) as attributes."""
    from tests.test_browser import serving_app

    log = tmp_path / f"{name}.log"
    with serving_app(data_dir, "--base-model", str(model_dir), "--sync-dir", str(sync_dir), log=log) as (url, _):
        yield SimpleNamespace(url=url, log=log)


def exported(data_dir: Path, sync_dir: Path, out: Path) -> tuple[list[str], str]:
    done = run_cli("export", "--data-dir", str(data_dir), "--format", "dpo", "--out", str(out),
                   "--sync-dir", str(sync_dir))
    assert done.returncode == 0, done.stderr
    return sorted(json.loads(line)["prompt"][0]["content"] for line in out.read_text().splitlines()), done.stderr


@pytest.mark.slow
def test_votes_through_the_api_export_while_the_app_runs_and_come_back_once_after_the_db_is_lost(
        tmp_path, tiny_model_dir, data_dir):
    from gradio_client import Client

    sync_dir = tmp_path / "second-disk"
    ids = make_comparisons(data_dir, 4)
    with serving(tmp_path, tiny_model_dir, data_dir, sync_dir, "first") as app:
        client = Client(app.url, verbose=False)
        for comparison_id in ids[:3]:
            assert client.predict(comparison_id, "a", "", api_name="/arena_vote").startswith("saved")
        prompts, note = exported(data_dir, sync_dir, tmp_path / "live.jsonl")
        assert prompts == QUESTIONS[:3], note  # while the app holds the DB
        assert "read the journal" in note  # instead of the DB file the app holds
    assert "journaled 4 existing rows" in app.log.read_text()  # the comparisons made before the journal

    lose_db(data_dir)
    with serving(tmp_path, tiny_model_dir, data_dir, sync_dir, "second") as app:
        assert "restored 0 prompts, 4 comparisons, 3 votes" in app.log.read_text()
        client = Client(app.url, verbose=False)  # the restored comparisons take votes again
        assert client.predict(ids[3], "b", "", api_name="/arena_vote").startswith("saved")
        # /arena_undo: gone from the next export, undone once, and the comparison can be voted again
        assert client.predict(ids[3], api_name="/arena_undo").startswith("undone")
        # one export covers both: the 3 restored votes are in it, the undone 4th is not
        prompts, _ = exported(data_dir, sync_dir, tmp_path / "undone.jsonl")
        assert prompts == QUESTIONS[:3]
        with pytest.raises(Exception, match="no vote on comparison"):
            client.predict(ids[3], api_name="/arena_undo")
        assert client.predict(ids[3], "a", "", api_name="/arena_vote").startswith("saved")
    with Store(data_dir) as store:
        votes = [r["comparison_id"] for r in store.labeled_rows()]
    assert sorted(votes) == sorted(ids)  # each once


REAL_FSYNC = os.fsync


class SlowDisk:
    """labeling.journal's os.fsync, recording what each completed fsync made durable: the file's bytes
    when it started (lines written after that are not covered by it). The first fsync does not return
    until `lines` more lines were written: the other writers wrote while it ran, so they must share the next."""

    def __init__(self, journal_: journal.Journal, lines: int):
        self.journal = journal_
        self.lines = journal_.path.read_bytes().count(b"\n") + lines  # the setup's records are there already
        self.durable = b""  # the bytes every completed fsync covers
        self.calls = 0
        self.all_written = threading.Event()
        waits = journal_._synced_or_failed.wait

        def counted_wait(*args, **kwargs):  # a writer has written its lines and now waits for an fsync
            if self.journal.path.read_bytes().count(b"\n") >= self.lines:
                self.all_written.set()
            return waits(*args, **kwargs)

        journal_._synced_or_failed.wait = counted_wait
        self._lock = threading.Lock()

    def fsync(self, fd: int) -> None:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        covered = self.journal.path.read_bytes()
        REAL_FSYNC(fd)
        if first:  # a slow disk: the others write while it runs (a timeout only so a broken build fails, not hangs)
            assert self.all_written.wait(timeout=60), "the other writers never wrote while the first fsync ran"
        with self._lock:
            self.durable = max(self.durable, covered, key=len)


def test_concurrent_votes_share_fsyncs_and_each_is_acknowledged_only_once_on_disk(data_dir, monkeypatch):
    """Group commit: votes cast together share an fsync, outside the database's writer lock, and a vote
    returns (is acknowledged) only after an fsync that began after its line was written."""
    voters = 12
    store = Store(data_dir, journal_dir=data_dir / "journal")
    ids = [store.add_comparison([{"role": "user", "content": f"q{i}"}], "a", "b", "base", "r1", None, "fp", {}, "setup")
           for i in range(voters + 1)]
    disk = SlowDisk(store.journal, lines=voters + 1)
    monkeypatch.setattr(journal.os, "fsync", disk.fsync)
    uncovered, errors = [], []

    def cast(comparison_id: str, annotator: str) -> None:
        try:
            result = store.record_vote(comparison_id, annotator, "a")
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
            return
        if result.vote_id.encode() not in disk.durable:  # acknowledged now: its line must be on disk now
            uncovered.append(result.vote_id)

    first = threading.Thread(target=cast, args=(ids[0], "first"))
    first.start()  # its fsync waits until every other voter has written and queued behind it
    others = [threading.Thread(target=cast, args=(cid, f"voter{i}")) for i, cid in enumerate(ids[1:])]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(timeout=120)
    store.close()
    assert not errors, errors
    assert not uncovered, f"{len(uncovered)} votes acknowledged before an fsync covered them"
    assert disk.calls == 2, f"{voters + 1} concurrent votes took {disk.calls} fsyncs"  # the first, then all the rest
    records, _ = journal.read(data_dir / "journal")
    assert sum(r["type"] == "vote" for r in records) == voters + 1


def test_a_failed_fsync_fails_every_write_it_would_have_covered(tmp_path, monkeypatch):
    log = journal.Journal(tmp_path / "journal")
    log.append([journal.record("vote", "v0", {})])

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal.os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        log.append([journal.record("vote", "v1", {})])
    monkeypatch.undo()
    log.append([journal.record("vote", "v2", {})])  # the disk is back: later writes are acknowledged again
    log.close()
    assert [r["id"] for r in journal.read(tmp_path / "journal")[0]] == ["v0", "v1", "v2"]
