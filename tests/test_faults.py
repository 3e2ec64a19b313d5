"""Faults on one machine, loopback only:
- the app killed with -9 in the middle of a vote burst from 20 concurrent clients keeps every vote
  it acknowledged, exactly once;
- a COMMIT that fails is not acknowledged, the vote buttons come back, and voting again works."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from gradio_client import Client

from labeling.store import Store
from tests.conftest import ROOT
from tests.test_browser import CHROMIUM, browser, free_port, wait_until_serving  # noqa: F401 (fixture)
from tests.test_loop_browser import wait_text

pytestmark = pytest.mark.slow
CLIENTS = 20
VOTES_PER_CLIENT = 8
KILL_AFTER_ACKS = 40  # kill -9 once this many votes are acknowledged: well inside the burst


def make_comparisons(data_dir, n: int) -> list[str]:
    with Store(data_dir) as store:
        return [store.add_comparison([{"role": "user", "content": f"question {i}"}], f"answer a {i}",
                                     f"answer b {i}", "base", "base", None, None, {"seed": i}, "setup")
                for i in range(n)]


def test_kill_9_during_a_vote_burst_keeps_every_acknowledged_vote_once(tmp_path, tiny_model_dir):
    data_dir = tmp_path / "data"
    ids = make_comparisons(data_dir, CLIENTS * VOTES_PER_CLIENT)
    port = free_port()
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        app = subprocess.Popen([sys.executable, "app.py", "--data-dir", str(data_dir), "--port", str(port),
                                "--base-model", str(tiny_model_dir)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, app, log)
        clients = [Client(url, verbose=False) for _ in range(CLIENTS)]
        acked: list[tuple[str, float]] = []  # (comparison id, seconds from send to acknowledgement)
        failures: list[str] = []
        lock = threading.Lock()
        enough = threading.Event()

        def annotate(client: Client, mine: list[str]) -> None:
            for comparison_id in mine:
                sent = time.perf_counter()
                try:
                    reply = client.predict(comparison_id, "a", "", api_name="/arena_vote")
                except Exception as exc:  # the app died under us: this vote was never acknowledged
                    with lock:
                        failures.append(type(exc).__name__)
                    return
                assert reply.startswith("saved"), reply
                with lock:
                    acked.append((comparison_id, time.perf_counter() - sent))
                    if len(acked) >= KILL_AFTER_ACKS:
                        enough.set()

        threads = [threading.Thread(target=annotate, args=(c, ids[i::CLIENTS]), daemon=True)
                   for i, c in enumerate(clients)]
        for thread in threads:
            thread.start()
        assert enough.wait(timeout=120), f"only {len(acked)} votes acknowledged; app log:\n{log.read_text()[-2000:]}"
        os.kill(app.pid, signal.SIGKILL)
        app.wait(timeout=30)
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()

    with Store(data_dir) as store:  # the restart: DuckDB replays its WAL on open
        votes = store.labeled_rows()
    stored = [v["comparison_id"] for v in votes]
    acked_ids = [comparison_id for comparison_id, _ in acked]
    assert len(stored) == len(set(stored))  # exactly once
    missing = set(acked_ids) - set(stored)
    assert not missing, f"{len(missing)} acknowledged votes lost"
    assert len(acked_ids) < len(ids), "the kill came after the burst ended: it tested nothing"
    latencies = sorted(seconds for _, seconds in acked)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"\nvote burst: {CLIENTS} clients, acknowledged {len(acked_ids)}, present {len(set(stored) & set(acked_ids))}"
          f" (+{len(set(stored) - set(acked_ids))} stored but unacknowledged), failed sends {len(failures)},"
          f" p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")


class CommitFailsOnce:
    """The app's DuckDB connection, except that the next COMMIT fails as a full disk would."""

    def __init__(self, connection):
        self._connection = connection
        self.armed = False

    def execute(self, sql, *args):
        if self.armed and sql == "COMMIT":
            self.armed = False
            raise duckdb.IOException("Could not write file: No space left on device")
        return self._connection.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._connection, name)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_a_failed_commit_is_not_acknowledged_and_the_vote_can_be_cast_again(browser, tiny_model_dir, data_dir):
    """The real app in this process (so its connection can fail), driven by a real browser."""
    import app
    from models.chat import ChatModel
    from models.loading import load_base
    from pipeline import JobManager
    from ui.services import Services
    from ui.settings import Settings

    settings = Settings(data_dir=data_dir, base_model=str(tiny_model_dir), port=free_port())
    model, tokenizer = load_base(str(tiny_model_dir), dtype="fp32")
    store = Store(data_dir)
    faulty = CommitFailsOnce(store._db._conn)
    store._db._conn = faulty
    services = Services(settings, ChatModel(model, tokenizer), store, JobManager(settings))
    demo = app.build_ui(settings, services)
    demo.launch(server_name="127.0.0.1", server_port=settings.port, prevent_thread_lock=True, quiet=True)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    try:
        page.goto(f"http://127.0.0.1:{settings.port}/")
        page.fill("#arena-prompt textarea", "is the disk full?")
        page.click("#arena-generate")
        page.wait_for_selector("#vote-a:not([disabled])", timeout=120_000)
        faulty.armed = True
        page.click("#vote-a")
        wait_text(page, "#arena-reveal", "Vote not saved")
        assert "No space left on device" in page.inner_text("#arena-reveal")
        page.wait_for_selector("#vote-a:not([disabled])", timeout=10_000)  # the buttons are back
        assert store.labeled_rows() == []  # not acknowledged, and nothing half-saved
        page.click("#vote-a")
        wait_text(page, "#arena-reveal", "Vote saved")
        votes = store.labeled_rows()
        assert [(v["choice"], v["messages"][-1]["content"]) for v in votes] == [("a", "is the disk full?")]
    finally:
        page.close()
        demo.close()
        store.close()
