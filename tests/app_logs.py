"""The logs of the apps the tests serve (tests/test_browser.serving_app): running now, and stopped during the
current test. A failing test shows the tail of each in its report (conftest's makereport hook): CI keeps what
pytest prints, not the temp dirs the logs were in.

Its own module because pytest imports conftest.py as `conftest` while the tests import `tests.conftest`:
two module objects, so a list kept there would not be the one the hook reads."""

from __future__ import annotations

from pathlib import Path

TAIL_LINES = 40
live: list[Path] = []
ended: list[Path] = []


def started(log: Path) -> None:
    live.append(log)


def stopped(log: Path) -> None:
    live.remove(log)
    ended.append(log)


def new_test() -> None:
    ended.clear()


def tails() -> list[tuple[str, str]]:
    """(section title, last lines) for every app live now or stopped during this test."""
    sections = []
    for log in dict.fromkeys(live + ended):
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else ["(no log written)"]
        sections.append((f"Captured app log tail: {log}", "\n".join(lines[-TAIL_LINES:])))
    return sections
