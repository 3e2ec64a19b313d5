"""The auth file: who may log in, with which role, and their hashed password.

One line per user, `name:role:pbkdf2_sha256$iterations$salt$hash`, written by
`python -m labeling users add` (the password comes on stdin, never on the command line,
and only its salted PBKDF2 hash is stored). Roles, from least to most:

- annotator: the Arena only (votes; the server picks the models and the sampling)
- reviewer:  also the Chat and Evals tabs, read-only
- admin:     also import, export, train, cancel, evals, promote and the Arena's settings

A legacy `name:password` line (plain text) still logs in, as an admin, so an existing
deployment keeps working; the app warns about each such line at start.

The running app reads the file again whenever it changes (`AuthFile`), so adding, removing or
re-roling a user needs no restart, which would stop everyone's generation and log everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from formats import write_atomic

ROLES = ("annotator", "reviewer", "admin")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
ITERATIONS = 200_000  # PBKDF2-SHA256; about 0.1 s per login on one core


@dataclass(frozen=True)
class User:
    name: str
    role: str
    secret: str  # "pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>", or a legacy plain password
    legacy: bool = False

    def check(self, password: str) -> bool:
        if self.legacy:
            return hmac.compare_digest(self.secret.encode(), password.encode())
        _, iterations, salt, digest = self.secret.split("$")
        return hmac.compare_digest(_hash(password, bytes.fromhex(salt), int(iterations)), digest)


def _hash(password: str, salt: bytes, iterations: int = ITERATIONS) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations).hex()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    return f"pbkdf2_sha256${ITERATIONS}${salt.hex()}${_hash(password, salt)}"


def at_least(role: str, needed: str) -> bool:
    """Whether `role` includes everything `needed` may do."""
    return ROLES.index(role) >= ROLES.index(needed)


def read_users(path: Path) -> dict[str, User]:
    """Every user of the auth file; ValueError naming the line for anything malformed."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read auth file {path}: {exc}") from exc
    users: dict[str, User] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) == 2 and parts[0].strip() and parts[1].strip():
            user = User(parts[0].strip(), "admin", parts[1].strip(), legacy=True)
        elif len(parts) == 3 and parts[1] in ROLES and parts[2].startswith("pbkdf2_sha256$") \
                and parts[2].count("$") == 3:
            user = User(parts[0], parts[1], parts[2])
        else:
            raise ValueError(f"{path}:{number}: expected 'name:role:hash' (python -m labeling users add) "
                             "or a legacy 'name:password'")
        if not NAME.match(user.name):
            raise ValueError(f"{path}:{number}: user name {user.name!r} must be letters, digits, '_', '.', '@', '-'")
        if user.name in users:
            raise ValueError(f"{path}:{number}: user {user.name!r} appears twice")
        users[user.name] = user
    if not users:
        raise ValueError(f"{path}: no users; add one with `python -m labeling users add --auth-file {path} ...`")
    return users


def _other_lines(path: Path, name: str) -> list[str]:
    """The auth file's lines for everyone but `name`, as they are; refuses to touch a broken file."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if text.strip():
        read_users(path)
    return [line for line in text.splitlines() if line.split(":", 1)[0].strip() != name]


def remove_user(path: Path, name: str) -> None:
    """Take `name` out of the auth file (atomic rewrite). The last user cannot go: an app with an auth
    file must have someone who can log in."""
    path = Path(path)
    users = read_users(path)
    if name not in users:
        raise ValueError(f"{path}: no user {name!r} (users: {', '.join(sorted(users))})")
    if len(users) == 1:
        raise ValueError(f"{path}: {name} is the only user; add another before removing them")
    write_atomic(path, ("\n".join(_other_lines(path, name)) + "\n").encode(), mode=0o600)


class AuthFile(Mapping):
    """The auth file as the running app sees it: name -> User, read again when the file changes
    (checked on each lookup: one stat). An edit that does not parse, or a file that is gone, keeps
    the last good list, with one warning on stderr, rather than lock the whole team out."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = self._stamp_now()
        self._users = read_users(self.path)

    def _stamp_now(self):
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            return repr(exc)
        return stat.st_mtime_ns, stat.st_size, stat.st_ino  # an atomic rewrite is a new inode

    def _current(self) -> dict[str, User]:
        stamp = self._stamp_now()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._users = read_users(self.path)
                        print(f"{self.path}: reloaded, {len(self._users)} users", file=sys.stderr, flush=True)
                    except ValueError as exc:
                        print(f"warning: {exc}; the app keeps the users it had", file=sys.stderr, flush=True)
        return self._users

    def __getitem__(self, name: str) -> User:
        return self._current()[name]

    def __iter__(self):
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


def add_user(path: Path, name: str, role: str, password: str) -> None:
    """Add or replace `name` in the auth file (atomic rewrite; other lines are kept as they are)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not NAME.match(name or ""):
        raise ValueError(f"user name {name!r} must be 1-64 letters, digits, '_', '.', '@' or '-'")
    if len(password) < 8:
        raise ValueError("the password must be at least 8 characters")
    path = Path(path)
    kept = _other_lines(path, name)
    kept.append(f"{name}:{role}:{hash_password(password)}")
    write_atomic(path, ("\n".join(kept) + "\n").encode(), mode=0o600)  # password hashes are still secrets
