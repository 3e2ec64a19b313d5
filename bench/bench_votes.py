"""Vote commit latency: the store's one-writer transactions vs DuckDB autocommit
inserts on a bare connection (baseline), measured in the same run.

    python bench/bench_votes.py [--votes 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402

from labeling.store import Store  # noqa: E402

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def percentile(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--votes", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = duckdb.connect(str(Path(tmp) / "raw.duckdb"))
        raw.execute("CREATE TABLE votes (id VARCHAR PRIMARY KEY, comparison_id VARCHAR, choice VARCHAR)")
        baseline = []
        for _ in range(args.votes):
            start = time.perf_counter()
            raw.execute("INSERT INTO votes VALUES (?, ?, 'a')", [str(uuid.uuid4()), str(uuid.uuid4())])
            baseline.append(time.perf_counter() - start)
        store = Store(Path(tmp) / "store")
        ids = [store.add_comparison(MESSAGES, "Paris.", "Lyon.", "base", "r1", None, "abc", {}, "bench")
               for _ in range(args.votes)]
        latencies = []
        for comparison_id in ids:
            start = time.perf_counter()
            store.record_vote(comparison_id, "bench", "a", idempotency_key=comparison_id)
            latencies.append(time.perf_counter() - start)
        store.close()
    base_median, store_median = statistics.median(baseline), statistics.median(latencies)
    print(f"{'variant':<40}{'median ms':>10}{'p95 ms':>9}{'ratio':>8}")
    print(f"{'bare autocommit INSERT (baseline)':<40}{base_median * 1e3:>10.2f}{percentile(baseline, .95) * 1e3:>9.2f}{1:>7.2f}x")
    print(f"{'Store.record_vote (checked, durable)':<40}{store_median * 1e3:>10.2f}{percentile(latencies, .95) * 1e3:>9.2f}"
          f"{store_median / base_median:>7.2f}x")
    print(f"({args.votes} votes each; ratio = time relative to the baseline)")


if __name__ == "__main__":
    main()
