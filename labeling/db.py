"""One DuckDB file opened the way DuckDB needs it; labeling/store.py says what goes in it.

DuckDB rules that shape this class:
- one read-write process per file, so the app is the only writer and the CLI
  opens read-only (`StoreLocked` while the app holds the file);
- a connection is not thread-safe: writes go through the main connection behind
  a lock, inside explicit BEGIN/COMMIT (otherwise a failing batch keeps its
  earlier statements); reads use one cursor per thread;
- COMMIT is durable once it returns, so an acknowledged vote survives kill -9.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import duckdb


class StoreLocked(RuntimeError):
    """Another process (the running app) holds the database file."""


class StoreWriteError(RuntimeError):
    """A write failed in DuckDB itself (disk full, I/O error, a failed COMMIT): nothing of it was saved."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored as naive UTC


class Database:
    """A DuckDB file: migrated on open, one writer at a time, a cursor per reading thread."""

    def __init__(self, path: Path, migrations: list[Callable], read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self.writes = 0  # write transactions since open (rolled-back ones too): lets callers cache reads
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise StoreLocked(f"{self.path} is in use by another process (the running app?)") from None
            raise
        self._lock = threading.RLock()
        self._local = threading.local()
        self._cursors: list = []
        try:
            self._migrate(migrations)
        except BaseException:
            self._conn.close()  # do not keep the file locked after a failed open
            raise

    def _migrate(self, migrations: list[Callable]) -> None:
        """Each migration runs once, in order, inside its own transaction; read-only opens only check."""
        if self.read_only:
            tables = {r[0] for r in self._conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            applied = self._conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] \
                if "schema_migrations" in tables else 0
            if applied != len(migrations):
                raise RuntimeError(f"{self.path} has schema {applied}/{len(migrations)}; open it once with the app")
            return
        self._conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)""")
        applied = {r[0] for r in self._conn.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, migration in enumerate(migrations, start=1):
            if version not in applied:
                with self.write() as db:
                    migration(db)
                    db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                               [version, migration.__name__, utc_now()])

    @contextmanager
    def write(self, then: Callable[[], None] | None = None):
        """The connection inside BEGIN ... COMMIT, under the writer lock; any exception rolls back.

        `then` runs after the COMMIT returned and the lock was released, so its slow part (the
        journal's fsync, shared by the writes that arrive together) does not hold up the next
        writer; if it raises, the data is committed all the same. The journal's order is not
        commit order then, and need not be: its records carry times taken inside the transaction."""
        if self.read_only:
            raise RuntimeError("store was opened read-only")
        with self._lock:
            self._conn.execute("BEGIN TRANSACTION")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    self._conn.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a failed COMMIT has already ended the transaction
                if isinstance(exc, duckdb.Error):
                    raise StoreWriteError(f"the database could not save this: {str(exc).splitlines()[0]}") from exc
                raise
            finally:
                self.writes += 1  # under the lock; counting a rolled-back one too only costs a cache miss
        if then is not None:
            then()

    def cursor(self):
        """This thread's cursor: DuckDB connections must not be shared across threads."""
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            with self._lock:
                cursor = self._conn.cursor()
                self._cursors.append(cursor)
            self._local.cursor = cursor
        return cursor

    def rows(self, sql: str, params=()) -> list[dict]:
        cursor = self.cursor().execute(sql, list(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def scalar(self, sql: str, params=()):
        return self.cursor().execute(sql, list(params)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            for cursor in self._cursors:
                cursor.close()
            self._conn.close()
