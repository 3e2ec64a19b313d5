"""The vote journal: every write that matters for the data, also appended as JSON lines to segment files.

DuckDB keeps the one file only the app may open; the journal is the copy anyone may read, and the
one that survives losing that file (a Space without persistent disk, a dead disk):
- one segment per process, `segment-<utc start>-<pid>-<uuid8>.jsonl`, so two processes, or an
  uploader copying the folder away, never write to the same file;
- a segment is only ever appended to: one JSON line per record, flushed and fsynced before the
  write is acknowledged, so a vote the app acknowledged is in the journal (writes that arrive
  together share one fsync: `Journal.append`);
- a record is `{"type": prompt|comparison|vote|undo|promotion|exclusion|guideline, "id": ..., "at": UTC ISO time,
  "row": {column: value}}`, the row whole, so rows can be rebuilt without the database.

labeling/store.py decides what to journal and rebuilds rows from it (`Store.restore_from_journal`):
the SQL stays there. Restore is keyed by ids, so a record read twice changes nothing.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from datetime import date, datetime, timezone
from pathlib import Path

TYPES = ("prompt", "comparison", "vote", "undo", "promotion", "exclusion", "guideline")
SEGMENT_GLOB = "segment-*.jsonl"


def default_dir(data_dir) -> Path:
    """Where the journal goes without --sync-dir."""
    return Path(data_dir) / "journal"


def _plain(value):
    return value.isoformat() if isinstance(value, (datetime, date)) else value


def record(kind: str, row_id, row: dict) -> dict:
    if kind not in TYPES:
        raise ValueError(f"unknown journal record type {kind!r}")
    at = datetime.now(timezone.utc).replace(tzinfo=None).isoformat()
    return {"type": kind, "id": row_id, "at": at, "row": {k: _plain(v) for k, v in row.items()}}


class Journal:
    """This process's segment in `directory`; the file is created on the first record.

    Group commit: lines are written in call order under a short lock, and one fsync covers every
    line written before it started, so votes arriving together share one fsync instead of queueing
    for one each. `append` returns only once an fsync that began after its own write has succeeded.
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self.path = self.directory / f"segment-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._file = None
        self._lock = threading.Lock()
        self._synced_or_failed = threading.Condition(self._lock)
        self._written = 0  # appends written to the file so far (numbered 1, 2, ...)
        self._synced = 0  # appends up to this one are on disk
        self._failed = 0  # appends up to this one met a failed fsync: they are not known to be on disk
        self._failure: BaseException | None = None
        self._syncing = False  # one fsync at a time; the others wait for it, then one syncs for all
        self.fsyncs = 0

    def append(self, records: list[dict]) -> None:
        """Write `records` and fsync them: when this returns they survive a crash or power loss."""
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode()
        with self._lock:
            if self._file is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab")
                _fsync_dir(self.directory)  # the new file's name must be durable too, not only its bytes
            self._file.write(data)
            self._file.flush()  # in the OS before any fsync that starts from now on
            self._written += 1
            mine = self._written
            while True:
                # failure first: after a failed fsync the kernel may have dropped those pages, and a
                # later fsync that succeeds says nothing about them
                if self._failed >= mine:
                    raise OSError(f"the journal {self.path} could not be synced to disk: {self._failure}")
                if self._synced >= mine:
                    return
                if not self._syncing:
                    break  # this thread syncs, for itself and every line written before it starts
                self._synced_or_failed.wait()
            self._syncing, covers, fd = True, self._written, self._file.fileno()
        try:
            os.fsync(fd)  # outside the lock: the next lines are written meanwhile, for the next fsync
        except BaseException as exc:  # whatever it was, the waiters must not wait for this fsync forever
            with self._lock:
                self._syncing, self._failed, self._failure = False, self._written, exc
                self._synced_or_failed.notify_all()
            raise
        with self._lock:
            self._syncing, self._synced = False, covers
            self.fsyncs += 1
            self._synced_or_failed.notify_all()

    def close(self) -> None:
        with self._lock:
            while self._syncing:  # not under a running fsync
                self._synced_or_failed.wait()
            if self._file is not None:
                self._file.close()
                self._file = None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segments(directory) -> list[Path]:
    directory = Path(directory)
    return sorted(directory.glob(SEGMENT_GLOB)) if directory.is_dir() else []


def read(directory) -> tuple[list[dict], int]:
    """Every record of every segment, oldest first, and how many lines could not be read.

    A process killed mid-write leaves at most a torn last line in its own segment (later
    processes write other segments); such lines are skipped and counted, never guessed at.
    """
    found, unreadable = [], 0
    for order, path in enumerate(segments(directory)):
        for line_no, line in enumerate(path.read_bytes().splitlines()):
            try:
                rec = json.loads(line)
                if rec["type"] not in TYPES or not isinstance(rec["row"], dict):
                    raise ValueError(rec["type"])
                datetime.fromisoformat(rec["at"])
            except (ValueError, KeyError, TypeError):
                unreadable += 1
                continue
            found.append((rec["at"], order, line_no, rec))
    found.sort(key=lambda item: item[:3])  # time, then segment, then line: commit order within a process
    return [rec for *_, rec in found], unreadable


def newest(records: list[dict]) -> datetime | None:
    """When the newest record was written (naive UTC), or None for an empty journal."""
    return max((datetime.fromisoformat(r["at"]) for r in records), default=None)


def describe(found: dict) -> str:
    """What a restore (`Store.restore_from_journal`) added, in one phrase."""
    parts = [f"{found.get(k, 0)} {k}" for k in ("prompts", "comparisons", "votes", "promotions")]
    parts += [f"{found[k]} {label}" for k, label in (("exclusions", "exclusions and lifts"),
                                                     ("guidelines", "guideline versions")) if found.get(k)]
    parts += [f"{found[k]} {label}" for k, label in (("undone", "undone votes removed"), ("skipped", "votes skipped"),
                                                     ("unreadable", "unreadable lines")) if found.get(k)]
    return ", ".join(parts) + f" (of {found.get('records', 0)} records)"
