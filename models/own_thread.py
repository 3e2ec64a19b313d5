"""Run torch work on a thread of its own, so the decode loop stays the process's only OpenMP team.

libgomp (torch's CPU thread pool) gives each thread that runs a parallel op its own team of
worker threads, kept until that thread exits. Once the process holds more of these threads than
there are CPUs, every team's workers stop spinning between parallel regions and sleep at once
("throttled" spinning), so each of the hundreds of parallel ops in a decode step pays a futex
wake-up. Measured on 2 cores: after an adapter was loaded on the main thread, a decode step in
the loop took 41 ms instead of 23 ms (bench/bench_one_stream.py shows the same on the app path).

So work that runs parallel torch ops outside the loop (loading the base, an adapter, a full
fine-tune) runs here, on a fresh thread that ends when the work does, and its team ends with it.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def on_own_thread(work: Callable[[], T], name: str = "torch-work") -> T:
    """`work()`'s result (or exception), computed on a new thread that is gone when this returns."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller below, with its traceback
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
