"""Reviewer exclusions and labeling guidelines: their tables and SQL, which labeling/store.py delegates to.

Exclusions. A reviewer takes a comparison's votes out of training with a written reason, and can
lift that again. Both are rows of one append-only `exclusions` table (action `exclude` or `lift`),
never updates or deletes, so every decision keeps who made it, when and why, and a journal record
per row rebuilds the same state on restore, in any order, idempotently by id. A comparison is
excluded while its newest row says `exclude`. An excluded comparison's votes leave
`Store.labeled_rows()`, so they leave every export (the CLI reads the journal into the same store)
and every training snapshot; the snapshot's manifest names them with "excluded by <who>: <reason>".
The quality signals on annotators (agreement, position bias) still count them: a bad vote is
evidence about its annotator.

Guidelines. Stored here, in DuckDB and the journal, not as a file under the data dir: a Space loses
its disk, and only the journal travels to the dataset repo and comes back, so a vote's
`guidelines_version` must resolve to a text that survives with the votes. A version is the first
12 hex digits of the text's sha256: the same text is the same version on every machine, and a
restore can never renumber it. The newest saved text is in force; `Store.record_vote` stamps its
version on each vote inside the vote's own transaction.
"""

from __future__ import annotations

import hashlib
import uuid

from labeling.db import utc_now

ACTIONS = ("exclude", "lift")
MAX_REASON_CHARS = 2_000
MAX_GUIDELINES_CHARS = 50_000
EXCLUDED_CODE = "excluded_by_reviewer"  # the `code` of a snapshot manifest's entry for them


# ---- migrations (listed in store.MIGRATIONS) ----


def create_exclusions(db) -> None:
    db.execute("""CREATE TABLE exclusions (
        id VARCHAR PRIMARY KEY, comparison_id VARCHAR NOT NULL,
        action VARCHAR NOT NULL CHECK (action IN ('exclude', 'lift')),
        by_user VARCHAR NOT NULL, reason VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL)""")


def create_guidelines(db) -> None:
    db.execute("""CREATE TABLE guidelines (
        id VARCHAR PRIMARY KEY, version VARCHAR NOT NULL, text VARCHAR NOT NULL,
        edited_by VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL)""")
    db.execute("ALTER TABLE votes ADD COLUMN guidelines_version VARCHAR")  # the version in force at the vote


# the journal's columns per record type (store.JOURNALED)
EXCLUSION_COLUMNS = ("id", "comparison_id", "action", "by_user", "reason", "created_at")
GUIDELINE_COLUMNS = ("id", "version", "text", "edited_by", "created_at")

# comparisons excluded now: their newest row says exclude (ties on time broken by id, the same everywhere)
EXCLUDED = """
    SELECT comparison_id, by_user, reason, created_at FROM (
        SELECT *, row_number() OVER (PARTITION BY comparison_id ORDER BY created_at DESC, id DESC) AS newest
        FROM exclusions) WHERE newest = 1 AND action = 'exclude'"""

CURRENT_GUIDELINES = "SELECT version, text, edited_by, created_at FROM guidelines ORDER BY created_at DESC, id DESC LIMIT 1"


def version_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def reason_text(by: str, reason: str) -> str:
    """How a manifest and the UI say why a comparison is out of training."""
    return f"excluded by {by}: {reason}"


def decide(db, comparison_id: str, action: str, by: str, reason: str) -> tuple[list, bool]:
    """Insert an exclude or lift row for `comparison_id` (inside the caller's transaction): (the row as
    stored, True), or (None, False) when it is in that state already (a double click changes nothing)."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
    reason = (reason or "").strip()
    if action == "exclude" and not reason:
        raise ValueError("write why this comparison's votes should not be trained on: the reason is empty")
    if len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"the reason is over {MAX_REASON_CHARS} characters")
    if not db.execute("SELECT 1 FROM comparisons WHERE id = ?", [comparison_id]).fetchone():
        raise ValueError(f"unknown comparison id {comparison_id!r}")
    excluded = db.execute(f"SELECT 1 FROM ({EXCLUDED}) WHERE comparison_id = ?", [comparison_id]).fetchone()
    if bool(excluded) == (action == "exclude"):
        return None, False
    row = [str(uuid.uuid4()), comparison_id, action, by, reason, utc_now()]
    db.execute(f"INSERT INTO exclusions ({', '.join(EXCLUSION_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)", row)
    return row, True


def excluded_now(database) -> list[dict]:
    """Every comparison excluded now, newest first, with its prompt, answers and how many votes it holds back."""
    return database.rows(f"""
        SELECT e.comparison_id, e.by_user, e.reason, e.created_at, c.messages, c.answer_a, c.answer_b,
               (SELECT count(*) FROM votes v WHERE v.comparison_id = e.comparison_id) AS votes
        FROM ({EXCLUDED}) e LEFT JOIN comparisons c ON c.id = e.comparison_id
        ORDER BY e.created_at DESC, e.comparison_id""")


def history(database) -> list[dict]:
    """Every exclude and lift, newest first."""
    return database.rows(f"SELECT {', '.join(EXCLUSION_COLUMNS)} FROM exclusions ORDER BY created_at DESC, id DESC")


def save_guidelines(db, text: str, by: str) -> tuple[list | None, str]:
    """Make `text` the guidelines in force (inside the caller's transaction): (the new row or None when it
    is in force already, its version)."""
    if not isinstance(text, str):
        raise ValueError("the guidelines must be text")
    text = text.strip()
    if len(text) > MAX_GUIDELINES_CHARS:
        raise ValueError(f"the guidelines are over {MAX_GUIDELINES_CHARS:,} characters")
    version = version_of(text)
    current = db.execute(CURRENT_GUIDELINES).fetchone()
    if current is not None and current[0] == version:
        return None, version
    row = [str(uuid.uuid4()), version, text, by, utc_now()]
    db.execute(f"INSERT INTO guidelines ({', '.join(GUIDELINE_COLUMNS)}) VALUES (?, ?, ?, ?, ?)", row)
    return row, version
