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
from dataclasses import dataclass
from pathlib import Path

from formats import (
    canonical_jsonl, clean_messages, content_hash as messages_hash, now_iso, write_manifest, write_rows,
)
from labeling import agreement, pairs
from labeling.db import Database, StoreLocked, StoreWriteError, utc_now as _now

__all__ = ["DB_NAME", "MIGRATIONS", "Store", "StoreLocked", "StoreWriteError", "VoteResult"]

DB_NAME = "preferences.duckdb"
COMPARISON_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")  # uuid4, as stored
MAX_BETTER_ANSWER_CHARS = 20_000


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


MIGRATIONS = [_create_prompts, _create_comparisons_and_votes, _create_promotions, _add_promotion_fingerprint]


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
    def __init__(self, data_dir, read_only: bool = False):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no preferences database at {self.path}")
        self._db = Database(self.path, MIGRATIONS, read_only)
        self._report_lock = threading.Lock()  # two page loads at once compute the report once
        self._report: tuple[tuple[int, int], pairs.TrainingDataReport] | None = None

    def close(self) -> None:
        self._db.close()

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
        with self._db.write() as db:
            if prompt_id is not None and not db.execute("SELECT 1 FROM prompts WHERE id = ?", [prompt_id]).fetchone():
                raise ValueError(f"unknown prompt id {prompt_id}")
            db.execute("INSERT INTO comparisons VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
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
        with self._db.write() as db:
            # replays are answered with the earlier vote; the single writer makes check-then-insert safe
            existing = db.execute(
                "SELECT id, choice FROM votes WHERE idempotency_key = ? OR (annotator = ? AND comparison_id = ?) LIMIT 1",
                [idempotency_key, annotator, comparison_id]).fetchone()
            if existing:
                return VoteResult(existing[0], created=False, choice=existing[1])
            if not db.execute("SELECT 1 FROM comparisons WHERE id = ?", [comparison_id]).fetchone():
                raise ValueError(f"unknown comparison id {comparison_id!r}")
            vote_id = str(uuid.uuid4())
            db.execute("INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [vote_id, comparison_id, annotator, choice, better_answer, idempotency_key,
                        time_spent_s, _now()])
        return VoteResult(vote_id, created=True, choice=choice)

    def annotator_progress(self, annotator: str) -> dict:
        midnight = _now().replace(hour=0, minute=0, second=0, microsecond=0)  # UTC day
        today, total = self._db.cursor().execute(
            "SELECT count(*) FILTER (WHERE created_at >= ?), count(*) FROM votes WHERE annotator = ?",
            [midnight, annotator]).fetchone()
        return {"today": today, "total": total}

    def labeled_rows(self) -> list[dict]:
        rows = self._db.rows("""
            SELECT v.id AS vote_id, v.comparison_id, v.annotator, v.choice, v.better_answer, v.time_spent_s,
                   v.created_at, c.messages, c.answer_a, c.answer_b, c.model_a, c.model_b,
                   c.adapter_a, c.adapter_b, c.params, c.prompt_id
            FROM votes v JOIN comparisons c ON c.id = v.comparison_id
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
        with self._db.write() as db:
            known = {r[0] for r in db.execute("SELECT content_hash FROM prompts").fetchall()}
            new = [(h, m, c, r) for h, (m, c, r) in fresh.items() if h not in known]
            for content_hash, messages, category, reference in new:
                db.execute("""INSERT INTO prompts (content_hash, messages, source, category, reference, created_at)
                              VALUES (?, ?, ?, ?, ?, ?)""",
                           [content_hash, json.dumps(messages, ensure_ascii=False), source, category, reference,
                            _now()])
        return len(new)

    # Prompts the annotator has neither voted on nor been served (a comparison they
    # generated and skipped counts as served, so a skip does not come back forever).
    _UNSEEN = """
        WITH seen AS (
            SELECT prompt_id FROM comparisons WHERE annotator = ? AND prompt_id IS NOT NULL
            UNION SELECT c.prompt_id FROM votes v JOIN comparisons c ON c.id = v.comparison_id
                  WHERE v.annotator = ? AND c.prompt_id IS NOT NULL),
        labels AS (
            SELECT c.prompt_id, count(*) AS n FROM votes v JOIN comparisons c ON c.id = v.comparison_id
            GROUP BY c.prompt_id)
        SELECT p.id, p.messages, p.source, p.category, p.reference, coalesce(l.n, 0) AS labels
        FROM prompts p LEFT JOIN labels l ON l.prompt_id = p.id
        WHERE p.id NOT IN (SELECT prompt_id FROM seen)"""

    def next_prompt(self, annotator: str) -> dict | None:
        rows = self._db.rows(self._UNSEEN + " ORDER BY labels, p.id LIMIT 1", [annotator, annotator])
        if not rows:
            return None
        row = rows[0]
        row["messages"] = json.loads(row["messages"])
        row["prompt"] = row["messages"][-1]["content"]
        return row

    def queue_size(self, annotator: str | None = None) -> int:
        """Prompts still to label: for one annotator, or (no annotator) prompts nobody labeled yet."""
        if annotator is not None:
            return self._db.scalar(f"SELECT count(*) FROM ({self._UNSEEN})", [annotator, annotator])
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
        with self._db.write() as db:
            db.execute("""INSERT INTO promotions (round_id, action, promoted_by, reason, overridden, created_at,
                                                  adapter_fingerprint)
                          VALUES (?, 'promote', ?, ?, ?, ?, ?)""",
                       [_required(round_id, "round_id"), _required(by, "by"), reason, bool(overridden), _now(),
                        adapter_fingerprint])

    def promotions(self) -> list[dict]:
        """Promotion history, oldest first."""
        return self._db.rows("SELECT * FROM promotions ORDER BY id")

    def current_candidate(self) -> str | None:
        row = self._db.cursor().execute("SELECT round_id FROM promotions ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def stats(self) -> dict:
        rows = self.labeled_rows()
        return {
            "prompts": self._db.scalar("SELECT count(*) FROM prompts"),
            "comparisons": self._db.scalar("SELECT count(*) FROM comparisons"),
            "votes": len(rows),
            "choices": {c: n for c, n in Counter(r["choice"] for r in rows).items()},
            "annotators": dict(Counter(r["annotator"] for r in rows).most_common()),
            "position_bias": agreement.position_bias(rows),
            "agreement": agreement.agreement(rows),
        }
