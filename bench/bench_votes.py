"""Vote latency, from the store up to 20 annotators voting at once through the real app.

1. The store alone: `Store.record_vote` with and without the journal, against bare DuckDB
   autocommit INSERTs (baseline), in one process.
2. The app: `app.py` in a subprocess (the embedded model), voted on over loopback the way the page
   votes (`--route page`, the default): one POST to /gradio_api/run/arena_vote per vote, answered in
   its reply, each voter on its own kept-alive connection as a browser is; or with `gradio_client`
   (`--route client`), which always goes through gradio's queue and its message stream. Baseline: one
   voter alone (median round trip). Then N voters vote at the same moment, several rounds; printed:
   p50, p99 and the slowest acknowledgment, and slowest / lone.
   The same again while a generation runs in the decode loop (an `/arena_generate` call kept busy).
   Where a burst vote's time goes comes from the server itself (this file instruments it): client to
   handler start (HTTP, gradio's queue, a worker thread), the writer lock's wait, the transaction
   under it, the journal's fsync, handler end to acknowledgment (the SSE message back). Also printed:
   each burst's slowest vote, the burst on the server's own clock, the CPU per vote of the server
   and of the clients (and the floor the server's share sets), and the garbage collector's pauses.
   Every client votes once before timing: a client's first call opens its message stream, which an
   annotator's open page has done long before they vote.

    python bench/bench_votes.py [--votes 300] [--clients 20] [--rounds 6] [--route page|client] [--compare REF]

--compare REF serves a second app from the git commit REF (extracted with `git archive`) and
interleaves its rounds with this checkout's, so both are measured under the same load (with
`--route client` where REF's votes were still queued: its page route refuses them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("votes only", "during generation")
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def percentile(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def cpu_used(server: "Server", tally: list[float], votes: int):
    """Add the server's and this process's CPU seconds over the block, and its vote count, to `tally`."""
    server_start, client_start = process_cpu(server.process.pid), time.process_time()
    yield
    tally[0] += process_cpu(server.process.pid) - server_start
    tally[1] += time.process_time() - client_start
    tally[2] += votes


# ---- 1. the store alone --------------------------------------------------------------------


def store_bench(votes: int) -> None:
    import duckdb

    from labeling.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        raw = duckdb.connect(str(Path(tmp) / "raw.duckdb"))
        raw.execute("CREATE TABLE votes (id VARCHAR PRIMARY KEY, comparison_id VARCHAR, choice VARCHAR)")
        baseline = []
        for _ in range(votes):
            start = time.perf_counter()
            raw.execute("INSERT INTO votes VALUES (?, ?, 'a')", [str(uuid.uuid4()), str(uuid.uuid4())])
            baseline.append(time.perf_counter() - start)
        rows = [("bare autocommit INSERT (baseline)", baseline)]
        for label, journal_dir in (("Store.record_vote (checked, durable)", None),
                                   ("... and the journal line fsynced", Path(tmp) / "journal")):
            store = Store(Path(tmp) / f"store-{bool(journal_dir)}", journal_dir=journal_dir)
            ids = [store.add_comparison(MESSAGES, "Paris.", "Lyon.", "base", "r1", None, "abc", {}, "bench")
                   for _ in range(votes)]
            latencies = []
            for comparison_id in ids:
                start = time.perf_counter()
                store.record_vote(comparison_id, "bench", "a", idempotency_key=comparison_id)
                latencies.append(time.perf_counter() - start)
            store.close()
            rows.append((label, latencies))
    base = statistics.median(baseline)
    print(f"{'store, one thread':<40}{'median ms':>10}{'p95 ms':>9}{'ratio':>8}")
    for label, samples in rows:
        median = statistics.median(samples)
        print(f"{label:<40}{median * 1e3:>10.2f}{percentile(samples, .95) * 1e3:>9.2f}{median / base:>7.2f}x")
    print(f"({votes} votes each; ratio = time relative to the baseline)\n")


# ---- 2. the app: the server side (run as `--serve` in a subprocess) ---------------------------


def serve(argv: list[str], timings_path: Path) -> None:
    """app.main with timers around the vote handler, the writer lock and the journal; the timings
    are written to `timings_path` on SIGTERM. Imports the app from the current directory, so the
    same instruments fit an older checkout (--compare)."""
    sys.path.insert(0, os.getcwd())
    import app
    from labeling import db, journal
    from gradio.queueing import Queue
    from ui import arena

    local, records, records_lock = threading.local(), [], threading.Lock()

    class TimedLock:
        """The writer lock, timing the outermost acquisition per thread: wait, then hold."""

        def __init__(self, lock):
            self._lock, self._depth = lock, threading.local()

        def __enter__(self):
            depth = getattr(self._depth, "n", 0)
            start = time.perf_counter()
            self._lock.acquire()
            if depth == 0:
                self._acquired = time.perf_counter()
                local.lock_wait = getattr(local, "lock_wait", 0.0) + self._acquired - start
            self._depth.n = depth + 1
            return self

        def __exit__(self, *exc):
            self._depth.n -= 1
            if self._depth.n == 0:
                local.lock_held = getattr(local, "lock_held", 0.0) + time.perf_counter() - self._acquired
            self._lock.release()

    opened = db.Database.__init__

    def timed_init(self, *args, **kwargs):
        opened(self, *args, **kwargs)
        self._lock = TimedLock(self._lock)

    appended = journal.Journal.append

    def timed_append(self, records_):
        start = time.perf_counter()
        try:
            return appended(self, records_)
        finally:
            local.journal = getattr(local, "journal", 0.0) + time.perf_counter() - start

    voted = arena.api_vote

    def timed_vote(services, comparison_id, *args, **kwargs):
        local.lock_wait = local.lock_held = local.journal = 0.0
        start = time.time()
        try:
            return voted(services, comparison_id, *args, **kwargs)
        finally:
            with records_lock:
                records.append({"id": comparison_id, "pushed": pushed.pop(comparison_id, start), "start": start, "end": time.time(),
                                "lock_wait": local.lock_wait, "lock_held": local.lock_held,
                                "journal": local.journal})

    db.Database.__init__, journal.Journal.append, arena.api_vote = timed_init, timed_append, timed_vote
    pushed, joined = {}, Queue.push

    async def timed_push(self, body, *args, **kwargs):
        data = body.data or [None]
        if isinstance(data[0], str):
            pushed[data[0]] = time.time()  # the vote's POST reached gradio's queue
        return await joined(self, body, *args, **kwargs)

    Queue.push = timed_push

    pauses, gc_started = [], {}

    def gc_timer(phase, info):  # the collector's pauses, which stop every thread of the interpreter
        if phase == "start":
            gc_started["t"] = time.perf_counter()
        elif "t" in gc_started:
            pauses.append((info["generation"], time.perf_counter() - gc_started.pop("t"), time.time()))

    import gc
    gc.callbacks.append(gc_timer)

    def dump(*_):
        with records_lock:
            timings_path.write_text(json.dumps(records))
            timings_path.with_suffix(".gc.json").write_text(json.dumps(pauses))
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)
    sys.exit(app.main(argv))


# ---- 2. the app: the client side ---------------------------------------------------------------


class Server:
    """One app subprocess serving `checkout`, with its own data dir of ready-made comparisons."""

    def __init__(self, label: str, checkout: Path, model_dir: str, tmp: Path, comparisons: int):
        from labeling.store import Store

        self.label, self.data_dir = label, tmp / label.replace(" ", "-") / "data"
        with Store(self.data_dir) as store:
            self.ids = [store.add_comparison([{"role": "user", "content": f"question {i}"}], f"answer a {i}",
                                             f"answer b {i}", "base", "base", None, None, {"seed": i}, "setup")
                        for i in range(comparisons)]
        self.timings = self.data_dir.parent / "timings.json"
        self.log = self.data_dir.parent / "app.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve", str(self.timings), "--",
                 "--data-dir", str(self.data_dir), "--port", str(self.port), "--base-model", model_dir],
                cwd=checkout, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label}: app exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)  # the model is still loading
        raise TimeoutError(f"{self.label}: not serving after {timeout} s")

    def next_id(self) -> str:
        return self.ids.pop()

    def stop(self) -> list[dict]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        gc_file = self.timings.with_suffix(".gc.json")
        self.gc_pauses = json.loads(gc_file.read_text()) if gc_file.exists() else []
        return json.loads(self.timings.read_text()) if self.timings.exists() else []


NOOP_APP = """
import sys
import gradio as gr
def arena_vote(comparison_id: str, choice: str, better_answer: str = "") -> str:
    return f"saved: vote {comparison_id} ({choice})"
with gr.Blocks() as demo:
    gr.api(arena_vote, api_name="arena_vote", queue=sys.argv[2] == "queued")
demo.queue(default_concurrency_limit=16, max_size=256, status_update_rate=1.0, api_open=False)  # app.py's settings
demo.launch(server_port=int(sys.argv[1]))
"""


class NoopServer(Server):
    """gradio alone: a Blocks app whose /arena_vote returns at once, with no model, store or journal,
    served with app.py's queue settings. What a burst costs there is gradio's and the clients' share."""

    def __init__(self, tmp: Path, queued: bool):  # no model, comparisons or timings: the parent's are not needed
        self.label, self.count = "gradio, no-op handler", 0
        self.log, self.port = tmp / "noop.log", free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-c", NOOP_APP, str(self.port),
                                             "queued" if queued else "direct"],
                                            stdout=out, stderr=subprocess.STDOUT)

    def next_id(self) -> str:
        self.count += 1
        return f"noop-{self.count}"

    def stop(self) -> list[dict]:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        return []


def gradio_floor(args) -> None:
    """The same lone votes and bursts against gradio alone (NoopServer)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = NoopServer(Path(tmp), queued=args.route == "client")  # ("both": the page's route)
        try:
            server.wait()
            clients = [voter(server, args) for _ in range(args.clients)]
            for client in clients:  # warm-up, as in the app bench
                lone(server, client, 1)
            tally_lone, tally_burst = [0.0, 0.0, 0], [0.0, 0.0, 0]
            alone, bursts = [], []
            for _ in range(args.lone):
                with cpu_used(server, tally_lone, 1):
                    alone.extend(lone(server, clients[0], 1))
            for _ in range(args.rounds):
                with cpu_used(server, tally_burst, args.clients):
                    bursts.append(burst(server, clients))
        finally:
            server.stop()
    base = statistics.median([end - sent for _, sent, end in alone])
    slowest = [max(end - sent for _, sent, end in b) for b in bursts]
    print(f"\n{server.label}: the same {args.clients} clients, {args.rounds} bursts; ms")
    print(f"lone {base * 1e3:.0f}; slowest of each burst: " + " ".join(f"{t * 1e3:.0f}" for t in slowest))
    print(f"max {max(slowest) * 1e3:.0f} = {max(slowest) / base:.2f}x lone; bursts within 2x: "
          f"{sum(t <= 2 * base for t in slowest)} of {len(slowest)}; server CPU per vote: lone "
          f"{tally_lone[0] / tally_lone[2] * 1e3:.1f}, burst {tally_burst[0] / tally_burst[2] * 1e3:.1f}; clients "
          f"{tally_burst[1] / tally_burst[2] * 1e3:.1f}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PageVoter:
    """Votes as the page does: one POST to /gradio_api/run/arena_vote, answered in its reply, on a
    connection kept alive between votes (an open page keeps its connection). Same call as gradio_client."""

    def __init__(self, url: str):
        import httpx

        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=60)
        # the page's own session: without one gradio builds a fresh session state (a config for every
        # component of the app, ~10 ms of CPU) for each POST, which no open page pays
        self.session_hash = uuid.uuid4().hex[:11]

    def predict(self, *data, api_name: str) -> str:
        reply = self.http.post(f"/gradio_api/run{api_name}", json={"data": list(data), "session_hash": self.session_hash})
        if reply.status_code != 200:
            raise RuntimeError(f"{api_name}: HTTP {reply.status_code}: {reply.text[:300]}")
        return reply.json()["data"][0]


class Route:
    """One app as voted on by one route; the report's rows are keyed by its label. Everything else
    (the process, the comparison ids, the timings) is the app's."""

    def __init__(self, server: "Server", route: str, several: bool):
        self.server, self.route = server, route
        self.label = f"{server.label}, {route}" if several else server.label

    def __getattr__(self, name):
        return getattr(self.server, name)


def voter(server, args):
    """One annotator's connection to `server`, by the route the bench measures."""
    if getattr(server, "route", args.route) == "page":
        return PageVoter(server.url)
    from gradio_client import Client

    return Client(server.url, verbose=False, ssl_verify=args.client_verify)


def vote(client, comparison_id: str) -> tuple[float, float]:
    """(sent, acknowledged) wall-clock times of one /arena_vote."""
    sent = time.time()
    reply = client.predict(comparison_id, "a", "", api_name="/arena_vote")
    if not reply.startswith("saved"):
        raise RuntimeError(reply)
    return sent, time.time()


def lone(server: Server, client, votes: int) -> list[tuple[str, float, float]]:
    """(comparison id, sent, acknowledged) of `votes` votes one after another."""
    return [(cid, *vote(client, cid)) for cid in (server.next_id() for _ in range(votes))]


def burst(server: Server, clients: list) -> list[tuple[str, float, float]]:
    """Every client votes once, released at the same moment: (comparison id, sent, acknowledged)."""
    gate, results, lock = threading.Barrier(len(clients)), [], threading.Lock()
    ids = [server.next_id() for _ in clients]

    def one(client, comparison_id):
        gate.wait()
        sent, end = vote(client, comparison_id)
        with lock:
            results.append((comparison_id, sent, end))

    threads = [threading.Thread(target=one, args=pair) for pair in zip(clients, ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@contextmanager
def generating(server: Server):
    """A generation kept running in the server's decode loop (one /arena_generate after another)."""
    from gradio_client import Client

    client, stop, calls = Client(server.url, verbose=False, ssl_verify=False), threading.Event(), []

    def loop():
        while not stop.is_set():
            start = time.perf_counter()
            try:
                client.predict("Write a long story about a lighthouse keeper and the sea.", 256,
                               api_name="/arena_generate")
            except Exception:  # noqa: BLE001 (the app was stopped under an unfinished generation)
                return
            calls.append(time.perf_counter() - start)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(1.5)  # past the prefill: the loop is decoding
    try:
        yield calls
    finally:
        stop.set()
        thread.join(timeout=120)


def app_bench(args, model_dir: str) -> None:
    routes = ("page", "client") if args.route == "both" else (args.route,)
    per_server = (args.lone * 2 + 4 + args.clients * (args.rounds + 1) * 2 + 10) * len(routes)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkouts = [("this checkout", ROOT)]
        if args.compare:
            old = tmp / "compare-checkout"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.compare], cwd=ROOT, check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            checkouts.insert(0, (f"at {args.compare}", old))
        apps = [Server(label, path, model_dir, tmp, per_server) for label, path in checkouts]
        # one row of the report per app and route, voted on in turns
        servers = [Route(app, route, len(routes) > 1) for app in apps for route in routes]
        try:
            for server in apps:
                server.wait()
            # ssl_verify=False: plain http on loopback either way, but with it gradio_client loads the
            # certificate store for every request (about 15 ms of CPU each, twice per call, under the
            # bench's one GIL), which real annotators pay on their own machines, not on the server's
            clients = {s.label: [voter(s, args) for _ in range(args.clients)] for s in servers}
            results = {(s.label, phase): ([], []) for s in servers for phase in PHASES}
            # [server CPU s, this process's CPU s, votes] for the lone votes and the bursts
            cpu = {(s.label, phase): ([0.0, 0.0, 0], [0.0, 0.0, 0]) for s in servers for phase in PHASES}
            generations = {}
            for phase in PHASES:
                for server in servers:  # warm-up, not counted: every client opens its message stream
                    for client in clients[server.label]:  # (as an annotator's open page already has)
                        lone(server, client, 1)
                    lone(server, clients[server.label][0], 2)
                with ExitStack() as stack:
                    if phase != "votes only":  # every app generates, so each is measured under the same load
                        for app in apps:
                            calls = stack.enter_context(generating(app))
                            generations.update({s.label: calls for s in servers if s.server is app})
                    for _ in range(args.lone):  # the apps take turns, vote by vote and burst by burst
                        for server in servers:
                            with cpu_used(server, cpu[(server.label, phase)][0], 1):
                                results[(server.label, phase)][0].extend(lone(server, clients[server.label][0], 1))
                    for _ in range(args.rounds):
                        for server in servers:
                            with cpu_used(server, cpu[(server.label, phase)][1], args.clients):
                                results[(server.label, phase)][1].extend(burst(server, clients[server.label]))
        finally:
            stopped = {app.label: app.stop() for app in apps}
            timings = {server.label: stopped[server.server.label] for server in servers}
    report(args, servers, results, timings, generations, cpu)


def report(args, servers, results, timings, generations, cpu) -> None:
    print(f"{args.clients} voters at once ({args.rounds} rounds), against one voter alone "
          f"({args.lone} votes, median), loopback; ms. Routes: page = POST /gradio_api/run/arena_vote, as the "
          f"page's buttons vote; client = gradio_client through gradio's queue, ssl_verify={args.client_verify}")
    print(f"{'app':<22}{'phase':<19}{'lone':>7}{'p50':>7}{'p99':>7}{'max':>7}{'max/lone':>10}")
    for server in servers:
        for phase in PHASES:
            alone, bursts = results[(server.label, phase)]
            base = statistics.median([end - sent for _, sent, end in alone])
            rtts = [end - sent for _, sent, end in bursts]
            print(f"{server.label:<22}{phase:<19}{base * 1e3:>7.0f}{statistics.median(rtts) * 1e3:>7.0f}"
                  f"{percentile(rtts, .99) * 1e3:>7.0f}{max(rtts) * 1e3:>7.0f}{max(rtts) / base:>9.2f}x")
    print("slowest vote of each burst, in order (ms):")
    for server in servers:
        for phase in PHASES:
            bursts = results[(server.label, phase)][1]
            slowest = [max(end - sent for _, sent, end in bursts[i:i + args.clients]) * 1e3
                       for i in range(0, len(bursts), args.clients)]
            print(f"{server.label:<22}{phase:<19}" + " ".join(f"{ms:.0f}" for ms in slowest))
    print("\nthe server's side alone (its clock: from a POST reaching gradio's queue, or on the page's route the"
          " handler's start, to the handler's end, the burst's first to its last; no client CPU, no polling), ms")
    for server in servers:
        by_id = {t["id"]: t for t in timings[server.label]}
        for phase in PHASES:
            alone, bursts = results[(server.label, phase)]
            lone_spans = [by_id[cid]["end"] - by_id[cid]["pushed"] for cid, *_ in alone if cid in by_id]
            spans = []
            for i in range(0, len(bursts), args.clients):
                rows = [by_id[cid] for cid, *_ in bursts[i:i + args.clients] if cid in by_id]
                if rows:
                    spans.append(max(t["end"] for t in rows) - min(t["pushed"] for t in rows))
            if lone_spans and spans:
                base = statistics.median(lone_spans)
                print(f"{server.label:<22}{phase:<19} lone {base * 1e3:.1f}; bursts median {statistics.median(spans) * 1e3:.0f}, "
                      f"max {max(spans) * 1e3:.0f} ({max(spans) / base:.1f}x lone)")
    print("\nwhere a vote's time goes (median / max, ms)")
    parts = ("to queue", "queue", "lock wait", "in lock", "journal", "to ack")
    print(f"{'app':<22}{'phase':<26}" + "".join(f"{p:>16}" for p in parts))
    for server in servers:
        by_id = {t["id"]: t for t in timings[server.label]}
        for phase, which in [(p, w) for p in PHASES for w in (0, 1)]:
            rows = [(by_id[cid], sent, end) for cid, sent, end in results[(server.label, phase)][which] if cid in by_id]
            if not rows:
                continue
            phase = f"{phase}, {'burst' if which else 'lone'}"
            columns = [[t["pushed"] - sent for t, sent, _ in rows], [t["start"] - t["pushed"] for t, *_ in rows], [t["lock_wait"] for t, *_ in rows],
                       [t["lock_held"] for t, *_ in rows], [t["journal"] for t, *_ in rows],
                       [end - t["end"] for t, _, end in rows]]
            print(f"{server.label:<22}{phase:<26}" + "".join(
                f"{statistics.median(c) * 1e3:>9.1f} /{max(c) * 1e3:>5.0f}" for c in columns))
    print("(to queue: from the client's call until its POST reached gradio's queue, or on the page's route the "
          "handler's start; queue: from there to the handler's start (0 off the queue); in lock: BEGIN..COMMIT under the writer lock, with the journal too where it is written under the lock; "
          "journal: the whole append, its fsync included)")
    print("\nCPU per vote (ms; the server process, all threads / this process's clients), and the floor it sets:"
          " a burst's votes share the server's one interpreter (the GIL), so the last of N waits for about"
          " N x the server's CPU per vote (votes only: during a generation the decode loop's CPU is counted too)")
    for server in servers:
        for phase in PHASES[:1]:
            (s_lone, c_lone, n_lone), (s_burst, c_burst, n_burst) = cpu[(server.label, phase)]
            alone = statistics.median([end - sent for _, sent, end in results[(server.label, phase)][0]])
            per_vote = s_burst / n_burst
            print(f"{server.label:<22}{phase:<19} lone: server {s_lone / n_lone * 1e3:.1f}, clients "
                  f"{c_lone / n_lone * 1e3:.1f}; burst: server {per_vote * 1e3:.1f}, clients "
                  f"{c_burst / n_burst * 1e3:.1f}; floor for the slowest of {args.clients}: "
                  f"{args.clients * per_vote * 1e3:.0f} ms = {args.clients * per_vote / alone:.1f}x a lone vote")
    for server in servers:
        first_vote = min(t["pushed"] for t in timings[server.label])  # not the collections made while starting
        for generation in (0, 1, 2):
            ms = [t * 1e3 for g, t, at in server.gc_pauses if g == generation and at >= first_vote]
            if ms:
                print(f"{server.label}: garbage collections of generation {generation} while voting: {len(ms)}, "
                      f"median {statistics.median(ms):.1f} ms, longest {max(ms):.0f} ms")
    for server in servers:
        calls = generations.get(server.label) or [float("nan")]
        print(f"{server.label}: the generation beside the votes (/arena_generate, 256 new tokens at most): "
              f"{len(calls)} finished, median {statistics.median(calls):.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--votes", type=int, default=300, help="store bench: votes per variant")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6, help="bursts per phase")
    parser.add_argument("--lone", type=int, default=15, help="votes of the lone client")
    parser.add_argument("--compare", metavar="REF", help="also serve this git commit, interleaved")
    parser.add_argument("--route", choices=("page", "client", "both"), default="page",
                        help="page: POST /gradio_api/run/arena_vote as the page's buttons do; "
                             "client: gradio_client, through gradio's queue; both: each, in turns")
    parser.add_argument("--client-verify", action="store_true",
                        help="gradio_client's default (loads the certificate store per request, in this process)")
    parser.add_argument("--skip-store", action="store_true")
    parser.add_argument("--gradio-floor", action="store_true",
                        help="also burst a bare gradio app whose vote handler does nothing (gradio's own share)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.serve:
        serve([a for a in rest if a != "--"], args.serve)
        return
    sys.path.insert(0, str(ROOT))
    if not args.skip_store:
        store_bench(args.votes)
    from models.loading import EMBEDDED, resolve_base_model

    app_bench(args, resolve_base_model(EMBEDDED, ROOT / "data" / "cache" / "models"))
    if args.gradio_floor:
        gradio_floor(args)


if __name__ == "__main__":
    main()
