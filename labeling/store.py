"""The preferences store: the schema, and every read and write of votes, prompts and promotions.

All SQL about the data lives here and is parameterized; how the DuckDB file is opened, locked,
written (one writer, explicit transactions) and read (a cursor per thread) is
labeling/db.py. The app is the only process that opens the file read-write.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from formats import (
    canonical_jsonl, clean_messages, content_hash as messages_hash, now_iso, write_manifest, write_rows,
)
from labeling import agreement, journal, pairs, prompt_queue, review
from labeling.db import Database, StoreLocked, StoreWriteError, utc_now as _now
from labeling.group_commit import GroupCommit

__all__ = ["DB_NAME", "MIGRATIONS", "Store", "StoreLocked", "StoreWriteError", "VoteResult"]

DB_NAME = "preferences.duckdb"
COMPARISON_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")  # uuid4, as stored
MAX_BETTER_ANSWER_CHARS = 20_000
UNDO_WINDOW_S = 300  # an annotator may take back their own vote this long after casting it


@dataclass(frozen=True)
class _VoteRequest:  # a checked vote on its way to the writer
    comparison_id: str
    annotator: str
    choice: str
    better_answer: str | None
    idempotency_key: str | None
    time_spent_s: float | None


@dataclass(frozen=True)
class VoteResult:
    vote_id: str
    created: bool  # False: a replay or double-click; vote_id is the vote recorded earlier
    choice: str = ""  # the choice stored: a replay that sends another choice does not change it


# ---- migrations: append only; each runs once, inside its own transaction ------


def _create_prompts(db) -> None:
    db.execute("CREATE SEQUENCE prompts_id_seq START 1")
    db.execute("""CREATE TABLE prompts (
        id INTEGER PRIMARY KEY DEFAULT nextval('prompts_id_seq'),
        content_hash VARCHAR NOT NULL UNIQUE,  -- sha256 of the messages: re-imports are no-ops
        messages VARCHAR NOT NULL, source VARCHAR NOT NULL, category VARCHAR, reference VARCHAR,
        created_at TIMESTAMP NOT NULL)""")


def _create_comparisons_and_votes(db) -> None:
    # answer_a was shown on the LEFT; model_a names the checkpoint that wrote it ("base" for the base)
    db.execute("""CREATE TABLE comparisons (
        id VARCHAR PRIMARY KEY, messages VARCHAR NOT NULL,
        answer_a VARCHAR NOT NULL, answer_b VARCHAR NOT NULL,
        model_a VARCHAR NOT NULL, model_b VARCHAR NOT NULL, adapter_a VARCHAR, adapter_b VARCHAR,
        params VARCHAR NOT NULL, annotator VARCHAR NOT NULL,
        prompt_id INTEGER REFERENCES prompts(id), created_at TIMESTAMP NOT NULL)""")
    db.execute("""CREATE TABLE votes (
        id VARCHAR PRIMARY KEY, comparison_id VARCHAR NOT NULL REFERENCES comparisons(id),
        annotator VARCHAR NOT NULL,
        choice VARCHAR NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),
        better_answer VARCHAR, idempotency_key VARCHAR UNIQUE, time_spent_s DOUBLE,
        created_at TIMESTAMP NOT NULL, UNIQUE (annotator, comparison_id))""")


def _create_promotions(db) -> None:
    db.execute("CREATE SEQUENCE promotions_id_seq START 1")
    db.execute("""CREATE TABLE promotions (
        id INTEGER PRIMARY KEY DEFAULT nextval('promotions_id_seq'), round_id VARCHAR NOT NULL,
        action VARCHAR NOT NULL CHECK (action IN ('promote')), promoted_by VARCHAR NOT NULL,
        reason VARCHAR NOT NULL, overridden BOOLEAN NOT NULL, created_at TIMESTAMP NOT NULL)""")


def _add_promotion_fingerprint(db) -> None:
    # which adapter weights were promoted: a round's name can later point at other files
    db.execute("ALTER TABLE promotions ADD COLUMN adapter_fingerprint VARCHAR")


MIGRATIONS = [_create_prompts, _create_comparisons_and_votes, _create_promotions, _add_promotion_fingerprint,
              review.create_exclusions, review.create_guidelines]

# What a journal record's row holds per type: the columns as stored (ids from sequences are left out:
# a prompt is known by its content hash, a promotion by round, author and time).
JOURNALED = {
    "prompt": ("prompts", ("content_hash", "messages", "source", "category", "reference", "created_at")),
    "comparison": ("comparisons", ("id", "messages", "answer_a", "answer_b", "model_a", "model_b", "adapter_a",
                                   "adapter_b", "params", "annotator", "prompt_id", "created_at")),
    "vote": ("votes", ("id", "comparison_id", "annotator", "choice", "better_answer", "idempotency_key",
                       "time_spent_s", "created_at", "guidelines_version")),
    "promotion": ("promotions", ("round_id", "action", "promoted_by", "reason", "overridden", "created_at",
                                 "adapter_fingerprint")),
    "exclusion": ("exclusions", review.EXCLUSION_COLUMNS),
    "guideline": ("guidelines", review.GUIDELINE_COLUMNS),
}


def _journal_record(kind: str, row_id, values) -> dict:
    return journal.record(kind, row_id, dict(zip(JOURNALED[kind][1], values)))


def _journal_key(kind: str, row_id, row: dict):
    """What makes two records the same row: restore inserts each key once."""
    if kind == "prompt":
        return row["content_hash"]
    if kind == "promotion":
        return row["round_id"], row["promoted_by"], str(row["created_at"]).replace(" ", "T")
    return row_id


def _stored(column: str, value):
    return datetime.fromisoformat(value) if column == "created_at" and isinstance(value, str) else value


# ---- input helpers ----------------------------------------------------------------


def _required(value, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value.strip()


def _check_format(fmt: str) -> None:
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"snapshot format must be jsonl or parquet, got {fmt!r}")


def _write_content_named(kind: str, rows: list[dict], out_dir, fmt: str) -> Path:
    """`<kind>-<sha>.<fmt>`; an existing file of the same rows is reused, never rewritten."""
    # hash the canonical JSONL so the name depends on the data, not on the parquet writer
    digest = hashlib.sha256(canonical_jsonl(rows)).hexdigest()[:12]
    path = Path(out_dir) / f"{kind}-{digest}.{fmt}"
    return path if path.exists() else write_rows(rows, path)


# ---- the store --------------------------------------------------------------------


class Store:
    def __init__(self, data_dir, read_only: bool = False, journal_dir=None, *, in_memory: bool = False):
        """`journal_dir`: also append every data write there (labeling/journal.py); `in_memory`: no file
        at all (the CLI's view of a journal while the app holds the file)."""
        self.data_dir = Path(data_dir)
        self.path = Path(":memory:") if in_memory else self.data_dir / DB_NAME
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no preferences database at {self.path}")
        self._db = Database(self.path, MIGRATIONS, read_only)
        self.journal = journal.Journal(journal_dir) if journal_dir is not None else None
        self._report_lock = threading.Lock()  # two page loads at once compute the report once
        self._report: tuple[tuple[int, int], pairs.TrainingDataReport] | None = None
        self._votes = GroupCommit(self._write_votes)  # votes arriving together share one transaction
        self.holds = prompt_queue.PromptHolds()  # who works on which queued prompt now

    @classmethod
    def from_journal(cls, journal_dir) -> tuple[Store, dict]:
        """An in-memory store rebuilt from a journal, and what the restore found."""
        store = cls(journal_dir, in_memory=True)
        return store, store.restore_from_journal(journal_dir)

    def close(self) -> None:
        self._db.close()
        if self.journal is not None:
            self.journal.close()

    @contextmanager
    def _write(self):
        """A write transaction, as (connection, list of journal records to append once it committed).

        The order is COMMIT, then the journal (fsynced), then the caller acknowledges. A crash in
        between leaves a committed row out of the journal, but nobody was told it was saved, and
        the next start journals whatever the journal lacks (`journal_missing`). The other order
        would let a record whose COMMIT then failed come back on restore as a row that never was.
        A journal that cannot be written fails the write though its row is committed: a retry
        finds the row and journals it again, and restore keys rows by id, so duplicates are harmless.
        """
        records: list[dict] = []
        with self._db.write(then=lambda: self._append_journal(records)) as db:
            yield db, records

    def _append_journal(self, records: list[dict]) -> None:
        if self.journal is not None and records:
            try:
                self.journal.append(records)
            except OSError as exc:
                raise StoreWriteError(f"saved in the database but not in the journal {self.journal.directory} "
                                      f"({exc}); try again once it is writable") from exc

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- comparisons and votes ----

    def add_comparison(self, messages: list[dict], answer_a: str, answer_b: str, model_a: str, model_b: str,
                       adapter_a: str | None, adapter_b: str | None, params: dict, annotator: str,
                       prompt_id: int | None = None) -> str:
        messages = clean_messages(messages)
        if not isinstance(answer_a, str) or not isinstance(answer_b, str):
            raise ValueError("answers must be strings")
        if not isinstance(params, dict):
            raise ValueError("params must be a dict")
        row = [str(uuid.uuid4()), json.dumps(messages, ensure_ascii=False), answer_a, answer_b,
               _required(model_a, "model_a"), _required(model_b, "model_b"), adapter_a, adapter_b,
               json.dumps(params, sort_keys=True), _required(annotator, "annotator"), prompt_id, _now()]
        with self._write() as (db, journaled):
            if prompt_id is not None and not db.execute("SELECT 1 FROM prompts WHERE id = ?", [prompt_id]).fetchone():
                raise ValueError(f"unknown prompt id {prompt_id}")
            db.execute("INSERT INTO comparisons VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            journaled.append(_journal_record("comparison", row[0], row))
        return row[0]

    def get_comparison(self, comparison_id: str) -> dict | None:
        rows = self._db.rows("SELECT * FROM comparisons WHERE id = ?", [comparison_id])
        if not rows:
            return None
        row = rows[0]
        row["messages"], row["params"] = json.loads(row["messages"]), json.loads(row["params"])
        return row

    def record_vote(self, comparison_id: str, annotator: str, choice: str, better_answer: str | None = None,
                    idempotency_key: str | None = None, time_spent_s: float | None = None) -> VoteResult:
        annotator = _required(annotator, "annotator")
        if not isinstance(comparison_id, str) or not COMPARISON_ID.match(comparison_id):
            shown = repr(comparison_id)[:40]  # never echo a huge or hostile id back whole
            raise ValueError(f"comparison_id must be the id /arena_generate returned, got {shown}")
        if choice not in pairs.CHOICES:
            raise ValueError(f"choice must be one of {', '.join(pairs.CHOICES)}, got {choice!r}")
        if better_answer is not None and not isinstance(better_answer, str):
            raise ValueError("better_answer must be a string")
        better_answer = (better_answer or "").strip() or None
        if better_answer and len(better_answer) > MAX_BETTER_ANSWER_CHARS:
            raise ValueError(f"better_answer is over {MAX_BETTER_ANSWER_CHARS} characters")
        idempotency_key = (idempotency_key or "").strip() or None
        if time_spent_s is not None and not (isinstance(time_spent_s, (int, float)) and math.isfinite(time_spent_s)
                                             and time_spent_s >= 0):
            raise ValueError("time_spent_s must be a non-negative number")
        result = self._votes.submit(_VoteRequest(comparison_id, annotator, choice, better_answer, idempotency_key,
                                                 time_spent_s))
        self.holds.release(annotator)  # their task is done; the queue is free to serve it by its order again
        return result

    def _write_votes(self, requests: list[_VoteRequest]):
        """GroupCommit's writer: the votes that arrived together, in one transaction, and then their
        journal lines (fsynced while the next batch's transaction runs). If the transaction fails,
        each vote is tried alone, so one bad vote does not fail the others."""
        try:
            outcomes, records = self._write_vote_batch(requests)
        except StoreWriteError:
            if len(requests) == 1:
                raise
            outcomes, records = [], []
            for request in requests:
                try:
                    outcome, more = self._write_vote_batch([request])
                    outcomes, records = outcomes + outcome, records + more
                except StoreWriteError as exc:
                    outcomes.append(exc)
        return outcomes, lambda: self._append_journal(records)

    def _write_vote_batch(self, requests: list[_VoteRequest]) -> tuple[list[VoteResult | Exception], list[dict]]:
        """One transaction for `requests`: (an outcome per request, the journal records to append)."""
        names = JOURNALED["vote"][1]
        columns = ", ".join(names)
        ids = sorted({r.comparison_id for r in requests})
        outcomes: list[VoteResult | Exception] = []
        journaled: list[dict] = []
        with self._db.write() as db:
            # replays are answered with the earlier vote; the single writer makes check-then-insert safe
            keys = [r.idempotency_key for r in requests if r.idempotency_key]
            earlier = [dict(zip(names, row)) for row in db.execute(
                f"SELECT {columns} FROM votes WHERE list_contains(?::VARCHAR[], comparison_id) "
                "OR list_contains(?::VARCHAR[], idempotency_key)", [ids, keys]).fetchall()]
            by_key = {v["idempotency_key"]: v for v in earlier if v["idempotency_key"]}
            by_pair = {(v["annotator"], v["comparison_id"]): v for v in earlier}
            known = {row[0] for row in db.execute(
                "SELECT id FROM comparisons WHERE list_contains(?::VARCHAR[], id)", [ids]).fetchall()}
            guidelines = db.execute(review.CURRENT_GUIDELINES).fetchone()  # the version the annotators were shown
            new_rows = []
            for r in requests:
                prior = (r.idempotency_key and by_key.get(r.idempotency_key)) or by_pair.get((r.annotator, r.comparison_id))
                if prior:  # journaled again: the first try may have committed and then failed to journal
                    journaled.append(journal.record("vote", prior["id"], prior))
                    outcomes.append(VoteResult(prior["id"], created=False, choice=prior["choice"]))
                elif r.comparison_id not in known:
                    outcomes.append(ValueError(f"unknown comparison id {r.comparison_id!r}"))
                else:
                    vote_id = str(uuid.uuid4())
                    row = [vote_id, r.comparison_id, r.annotator, r.choice, r.better_answer, r.idempotency_key,
                           r.time_spent_s, _now(), guidelines and guidelines[0]]
                    new_rows.append(row)
                    journaled.append(_journal_record("vote", vote_id, row))
                    by_pair[(r.annotator, r.comparison_id)] = dict(zip(names, row))  # a second try in this batch
                    if r.idempotency_key:
                        by_key[r.idempotency_key] = by_pair[(r.annotator, r.comparison_id)]
                    outcomes.append(VoteResult(vote_id, created=True, choice=r.choice))
            if new_rows:
                placeholders = ", ".join(["(" + ", ".join("?" * len(names)) + ")"] * len(new_rows))
                db.execute(f"INSERT INTO votes ({columns}) VALUES {placeholders}", [v for row in new_rows for v in row])
        return outcomes, journaled

    def undo_vote(self, comparison_id: str, annotator: str, within_s: float = UNDO_WINDOW_S) -> str:
        """Take back `annotator`'s own vote on the comparison, cast less than `within_s` ago; its id."""
        annotator = _required(annotator, "annotator")
        if not isinstance(comparison_id, str) or not COMPARISON_ID.match(comparison_id):
            raise ValueError(f"comparison_id must be the id /arena_generate returned, got {repr(comparison_id)[:40]}")
        with self._write() as (db, journaled):
            found = db.execute("SELECT id, created_at FROM votes WHERE annotator = ? AND comparison_id = ?",
                               [annotator, comparison_id]).fetchone()
            if found is None:
                raise ValueError(f"{annotator} has no vote on comparison {comparison_id} to undo")
            vote_id, age = found[0], (_now() - found[1]).total_seconds()
            if age > within_s:
                raise ValueError(f"a vote can be undone only within {within_s / 60:g} minutes of casting it; "
                                 f"this one was cast {age / 60:.0f} minutes ago")
            db.execute("DELETE FROM votes WHERE id = ?", [vote_id])
            journaled.append(journal.record("undo", vote_id, {"vote_id": vote_id, "comparison_id": comparison_id,
                                                              "annotator": annotator, "undone_at": _now()}))
        return vote_id

    def annotator_progress(self, annotator: str) -> dict:
        midnight = _now().replace(hour=0, minute=0, second=0, microsecond=0)  # UTC day
        today, total = self._db.cursor().execute(
            "SELECT count(*) FILTER (WHERE created_at >= ?), count(*) FROM votes WHERE annotator = ?",
            [midnight, annotator]).fetchone()
        return {"today": today, "total": total}

    def labeled_rows(self, include_excluded: bool = False) -> list[dict]:
        """One dict per vote, joined with its comparison: what exports and rounds are built from. Votes on a
        comparison a reviewer excluded are left out unless `include_excluded` (the quality signals)."""
        where = "" if include_excluded else f"WHERE v.comparison_id NOT IN (SELECT comparison_id FROM ({review.EXCLUDED}))"
        rows = self._db.rows(f"""
            SELECT v.id AS vote_id, v.comparison_id, v.annotator, v.choice, v.better_answer, v.time_spent_s,
                   v.created_at, v.guidelines_version, c.messages, c.answer_a, c.answer_b, c.model_a, c.model_b,
                   c.adapter_a, c.adapter_b, c.params, c.prompt_id
            FROM votes v JOIN comparisons c ON c.id = v.comparison_id {where}
            ORDER BY v.created_at, v.id""")
        for row in rows:
            row["messages"], row["params"] = json.loads(row["messages"]), json.loads(row["params"])
        return rows

    def vote_pairs_by_model(self) -> list[dict]:
        return self._db.rows("""SELECT c.model_a, c.model_b, v.choice FROM votes v
                              JOIN comparisons c ON c.id = v.comparison_id ORDER BY v.created_at, v.id""")

    # ---- prompt queue ----

    def import_prompts(self, rows: list[dict], source: str) -> int:
        source = _required(source, "source")
        fresh: dict[str, tuple] = {}
        for row in rows:
            messages = row.get("messages") or [{"role": "user", "content": _required(row.get("prompt"), "prompt")}]
            messages = clean_messages(messages)
            fresh.setdefault(messages_hash(messages), (messages, row.get("category"), row.get("reference")))
        with self._write() as (db, journaled):
            known = {r[0] for r in db.execute("SELECT content_hash FROM prompts").fetchall()}
            new = [(h, m, c, r) for h, (m, c, r) in fresh.items() if h not in known]
            for content_hash, messages, category, reference in new:
                row = [content_hash, json.dumps(messages, ensure_ascii=False), source, category, reference, _now()]
                prompt_id = db.execute("""INSERT INTO prompts (content_hash, messages, source, category, reference,
                                          created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id""", row).fetchone()[0]
                journaled.append(_journal_record("prompt", prompt_id, row))
        return len(new)

    def next_second_label(self, annotator: str, overlap_share: float) -> dict | None:
        """A comparison someone else generated and voted on, for a prompt in the double-labeled share,
        that this annotator has not seen and nobody else holds: voting on the same answers is what
        agreement measures. It is held for `annotator` (prompt_queue.PromptHolds)."""
        if overlap_share <= 0:
            return None
        with self.holds.serving:
            rows = self._db.rows(f"""
                SELECT c.* FROM comparisons c JOIN prompts p ON p.id = c.prompt_id
                WHERE {prompt_queue.DOUBLE}
                  AND (SELECT count(*) FROM votes v WHERE v.comparison_id = c.id) = 1
                  AND NOT EXISTS (SELECT 1 FROM votes v WHERE v.comparison_id = c.id AND v.annotator = ?)
                  AND c.annotator <> ?
                  AND c.prompt_id NOT IN (SELECT c2.prompt_id FROM comparisons c2 WHERE c2.annotator = ?
                                          AND c2.prompt_id IS NOT NULL)
                  AND c.prompt_id NOT IN (SELECT c3.prompt_id FROM votes v3 JOIN comparisons c3
                                          ON c3.id = v3.comparison_id WHERE v3.annotator = ? AND c3.prompt_id IS NOT NULL)
                  AND NOT list_contains(?::VARCHAR[], c.id)
                ORDER BY c.created_at, c.id LIMIT 1""",
                [round(overlap_share * 1000), annotator, annotator, annotator, annotator,
                 self.holds.held_by_others(annotator, str)])
            if not rows:
                return None
            row = rows[0]
            self.holds.hold(annotator, row["id"])
        row["messages"], row["params"] = json.loads(row["messages"]), json.loads(row["params"])
        return row

    def next_prompt(self, annotator: str) -> dict | None:
        """The unseen queued prompt expected to teach the most, scored from cheap signals of the earlier
        comparisons on it (`information`):
        - 2 when its votes split (annotators judged the same thing differently: labeling/prompt_queue.py);
        - plus the largest length gap between two answers, |len a - len b| / longer, 0 to 1: the
          models answer it differently, so a label separates them;
        - a prompt nobody labeled yet scores 1 (unknown; about one big gap).
        So split votes come first, then never-labeled prompts, then labeled ones whose answers differ
        most; a prompt the models answer alike (small gap, agreed vote) waits at the end. Ties go to
        the least labeled, then the oldest. Eval flags and ROUGE-L are not used: no cheap per-prompt
        figure of them exists at vote time.

        The prompt served is held for `annotator` (prompt_queue.PromptHolds): others are served it only
        when every other prompt left for them is held too."""
        with self.holds.serving:
            held = [self.holds.held_by_others(annotator), self.holds.held_by(annotator)]
            rows = self._db.rows(prompt_queue.NEXT, [annotator, annotator, *held])
            if not rows:
                return None
            row = rows[0]
            self.holds.hold(annotator, row["id"])
        row["messages"] = json.loads(row["messages"])
        row["prompt"] = row["messages"][-1]["content"]
        return row

    def queue_size(self, annotator: str | None = None) -> int:
        """Prompts still to label: for one annotator, or (no annotator) prompts nobody labeled yet."""
        if annotator is not None:
            return self._db.scalar(f"SELECT count(*) FROM ({prompt_queue.UNSEEN})", [annotator, annotator])
        return self._db.scalar("""SELECT count(*) FROM prompts p WHERE NOT EXISTS (
            SELECT 1 FROM comparisons c JOIN votes v ON v.comparison_id = c.id WHERE c.prompt_id = p.id)""")

    # ---- snapshots, promotions, stats ----

    def training_data_report(self) -> pairs.TrainingDataReport:
        """Votes, DPO/SFT row counts, the DPO build report, the data lint and what a round would leave
        out by default (`excluded`, `usable_dpo`, `usable_sft`), computed once per state.

        The Train tab asks on every page load and tab visit, and the lint (with the
        sales encoder) takes seconds on a few thousand pairs, while the answer only
        changes when something is written: it is kept until the vote count changes
        or any write commits. Every caller gets the same object; do not mutate it.
        """
        with self._report_lock:
            # the key is read before the rows: a write landing in between only costs a recompute
            key = (self._db.writes, self._db.scalar("SELECT count(*) FROM votes"))
            if self._report is None or self._report[0] != key:
                self._report = (key, pairs.training_data_report(self.labeled_rows()))
            return self._report[1]

    def write_snapshot(self, kind: str, out_dir, fmt: str = "jsonl") -> Path:
        """Every row the votes give, in an immutable file named by the hash of its rows (exports)."""
        _check_format(fmt)
        rows, _ = pairs.build(kind, self.labeled_rows())
        return _write_content_named(kind, rows, out_dir, fmt)

    def training_snapshot(self, method: str, out_dir: Path, *, include_flagged: bool = False,
                          include_cut_off: bool = False, fmt: str = "jsonl") -> pairs.Snapshot:
        """What a `method` round trains on: the rows less what the data lint leaves out, and a manifest.

        Comparisons with an error-level lint row (empty, canned, sales talk) and rows that train
        on a cut-off answer are left out unless `include_flagged` / `include_cut_off` (an admin's
        choice). The file is immutable and named by the hash of its rows; `<file>.manifest.json`
        beside it (formats.write_manifest, rewritten by every call) records method, rows, the
        include switches and one `excluded` entry per comparison left out. Raises ValueError when
        no row is left; how many rows are enough is the caller's call.
        """
        _check_format(fmt)
        report = self.training_data_report()  # cached: the lint with its sales encoder runs once per state
        rows, excluded = pairs.training_rows(report, method, include_flagged=include_flagged,
                                             include_cut_off=include_cut_off)
        excluded += self._reviewer_exclusions()
        if not rows:
            raise ValueError(pairs.nothing_left(method, excluded))
        path = _write_content_named(method, rows, out_dir, fmt)
        write_manifest(path, {"snapshot": path.name, "method": method, "rows": len(rows), "votes": report.votes,
                              "include_flagged": include_flagged, "include_cut_off": include_cut_off,
                              "excluded": excluded, "created_at": now_iso()})
        return pairs.Snapshot(path, len(rows), excluded)

    def record_promotion(self, round_id: str, by: str, reason: str, overridden: bool,
                         adapter_fingerprint: str | None = None) -> None:
        reason = (reason or "").strip()
        if overridden and not reason:
            raise ValueError("overriding a flagged regression needs a reason")
        row = [_required(round_id, "round_id"), "promote", _required(by, "by"), reason, bool(overridden), _now(),
               adapter_fingerprint]
        with self._write() as (db, journaled):
            promotion_id = db.execute("""INSERT INTO promotions (round_id, action, promoted_by, reason, overridden,
                                             created_at, adapter_fingerprint)
                                         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id""", row).fetchone()[0]
            journaled.append(_journal_record("promotion", promotion_id, row))

    def promotions(self) -> list[dict]:
        """Promotion history, oldest first."""
        return self._db.rows("SELECT * FROM promotions ORDER BY id")

    # ---- review: exclusions and guidelines (the SQL is in labeling/review.py) ----

    def exclude(self, comparison_id: str, by: str, reason: str) -> bool:
        """Take the comparison's votes out of every export and round, with a reason; False if it was already out."""
        return self._decide(comparison_id, "exclude", by, reason)

    def lift_exclusion(self, comparison_id: str, by: str, reason: str = "") -> bool:
        """Put an excluded comparison's votes back; False if it was not excluded."""
        return self._decide(comparison_id, "lift", by, reason)

    def _decide(self, comparison_id: str, action: str, by: str, reason: str) -> bool:
        by = _required(by, "by")
        if not isinstance(comparison_id, str) or not COMPARISON_ID.match(comparison_id.strip()):
            raise ValueError(f"a comparison id looks like 1b2c3d4e-…, got {repr(comparison_id)[:40]}")
        with self._write() as (db, journaled):
            row, changed = review.decide(db, comparison_id.strip(), action, by, reason)
            if changed:
                journaled.append(_journal_record("exclusion", row[0], row))
        return changed

    def exclusions(self) -> list[dict]:
        """Comparisons excluded now, newest first: comparison_id, by_user, reason, created_at, votes, messages…"""
        rows = review.excluded_now(self._db)
        for row in rows:
            row["messages"] = json.loads(row["messages"]) if row["messages"] else []
        return rows

    def exclusion_history(self) -> list[dict]:
        return review.history(self._db)

    def _reviewer_exclusions(self) -> list[dict]:
        """A snapshot manifest's `excluded` entries for the comparisons reviewers excluded that hold votes."""
        return [{"comparison_id": e["comparison_id"], "code": review.EXCLUDED_CODE,
                 "reason": review.reason_text(e["by_user"], e["reason"]),
                 "prompt": pairs.short(str(e["messages"][-1]["content"]) if e["messages"] else ""),
                 "answer": pairs.short(e["answer_a"] or ""), "excluded_at": e["created_at"].isoformat()}
                for e in self.exclusions() if e["votes"]]

    def guidelines(self) -> dict | None:
        """The labeling guidelines in force: version, text, edited_by, created_at; None before any were saved."""
        rows = self._db.rows(review.CURRENT_GUIDELINES)
        return rows[0] if rows else None

    def save_guidelines(self, text: str, by: str) -> str:
        """Make `text` (Markdown) the guidelines every later vote records; returns its version."""
        by = _required(by, "by")
        with self._write() as (db, journaled):
            row, version = review.save_guidelines(db, text, by)
            if row is not None:
                journaled.append(_journal_record("guideline", row[0], row))
        return version

    def current_candidate(self) -> str | None:
        row = self._db.cursor().execute("SELECT round_id FROM promotions ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def stats(self) -> dict:
        rows = self.labeled_rows(include_excluded=True)  # about the annotators: their excluded votes count too
        return {
            "excluded": self._db.scalar(f"SELECT count(*) FROM ({review.EXCLUDED})"),
            "prompts": self._db.scalar("SELECT count(*) FROM prompts"),
            "comparisons": self._db.scalar("SELECT count(*) FROM comparisons"),
            "votes": len(rows),
            "choices": {c: n for c, n in Counter(r["choice"] for r in rows).items()},
            "annotators": dict(Counter(r["annotator"] for r in rows).most_common()),
            "position_bias": agreement.position_bias(rows),
            "agreement": agreement.agreement(rows),
        }

    # ---- the journal (labeling/journal.py): rebuild the DB from it, and fill in what it lacks ----

    def is_empty(self) -> bool:
        """No comparison and no vote: a new or lost database, which a journal may fill."""
        return not self._db.scalar("SELECT (SELECT count(*) FROM comparisons) + (SELECT count(*) FROM votes)")

    def restore_from_journal(self, directory) -> dict:
        """Insert every row the journal in `directory` has and this DB lacks, and take undone votes out.

        Idempotent: each row is inserted once, by its key (ids; prompts by content hash, promotions
        by round, author and time), so a second restore, or one into a DB that has some of the rows,
        changes nothing. A prompt gets a fresh id; its comparisons follow it. Nothing is journaled:
        the rows are in a journal already (`journal_missing` copies them into this store's own).
        Returns what was added, how many records were read, and when the newest was written."""
        records, unreadable = journal.read(directory)
        added = Counter({"records": len(records), "unreadable": unreadable})
        undone = [r["id"] for r in records if r["type"] == "undo"]
        if undone:  # its own transaction: a vote cast again must not meet its undone twin in one
            with self._db.write() as db:
                added["undone"] = db.execute("DELETE FROM votes WHERE list_contains(?, id)", [undone]).fetchone()[0]
        cursor = self._db.cursor()
        prompt_ids = dict(cursor.execute("SELECT content_hash, id FROM prompts").fetchall())
        known = {kind: {_journal_key(kind, values[0], dict(zip(columns, values[1:])))
                        for values in cursor.execute(f"SELECT id, {', '.join(columns)} FROM {table}").fetchall()}
                 for kind, (table, columns) in JOURNALED.items()}
        vote_slots = set(cursor.execute("SELECT annotator, comparison_id FROM votes").fetchall())
        journal_prompts, undone = {}, set(undone)
        with self._db.write() as db:
            for rec in sorted(records, key=lambda r: journal.TYPES.index(r["type"])):  # prompts before comparisons
                kind, row = rec["type"], rec["row"]
                key = kind != "undo" and _journal_key(kind, rec["id"], row)
                if kind == "undo" or rec["id"] in undone or key in known[kind]:
                    if kind == "prompt" and key in prompt_ids:
                        journal_prompts[rec["id"]] = prompt_ids[key]
                    continue
                table, columns = JOURNALED[kind]
                values = {c: _stored(c, row.get(c)) for c in columns}
                if kind == "comparison":
                    values["prompt_id"] = journal_prompts.get(values["prompt_id"])
                if kind == "vote":
                    slot = (values["annotator"], values["comparison_id"])
                    if slot in vote_slots or values["comparison_id"] not in known["comparison"]:
                        added["skipped"] += 1  # another vote holds its place, or its comparison was never journaled
                        continue
                    vote_slots.add(slot)
                inserted = db.execute(f"INSERT INTO {table} ({', '.join(values)}) VALUES "
                                      f"({', '.join('?' * len(values))}) RETURNING id", list(values.values())).fetchone()
                if kind == "prompt":
                    journal_prompts[rec["id"]] = prompt_ids[key] = inserted[0]
                known[kind].add(key)
                added[kind + "s"] += 1
        return {**added, "newest": journal.newest(records)}

    def journal_missing(self) -> Counter:
        """Append to this store's journal every row it lacks (rows from before there was a journal, from a
        store without one, or restored from another folder), so that the journal alone rebuilds this DB."""
        if self.journal is None:
            return Counter()
        records, _ = journal.read(self.journal.directory)
        have = {(r["type"], _journal_key(r["type"], r["id"], r["row"])) for r in records if r["type"] != "undo"}
        missing = []
        for kind, (table, columns) in JOURNALED.items():
            query = f"SELECT id, {', '.join(columns)} FROM {table} ORDER BY created_at, id"
            for values in self._db.cursor().execute(query).fetchall():
                rec = _journal_record(kind, values[0], values[1:])
                if (kind, _journal_key(kind, rec["id"], rec["row"])) not in have:
                    missing.append(rec)
        self.journal.append(missing)
        return Counter(r["type"] for r in missing)
