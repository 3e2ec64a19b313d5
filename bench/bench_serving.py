"""Serving a team: N annotators ask for a comparison at the same moment. Baseline, measured in the
same run: the comparisons served one after another (how the app served before the shared decode
loop: one generation event at a time). Then the same comparisons through the shared loop
(models/scheduler.py), all at once. Embedded model, greedy, bf16 unless told otherwise, with the
app's copies of the weights (models/decode_weights.py): int8 on narrow steps unless --no-int8-decode
(it speeds the 2-row baseline), oneDNN-packed on wider ones unless --no-packed-decode (it speeds the
shared batch).

    python bench/bench_serving.py [--users 8] [--tokens 128] [--dtype bf16] [--no-int8-decode]
                                  [--no-packed-decode] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import decode_weights  # noqa: E402
from models.chat import ChatModel, SamplingParams  # noqa: E402

TOPICS = ["rainbows", "clear emails", "tide pools", "compound interest", "sourdough", "bicycle gears",
          "volcanoes", "jet lag", "chess openings", "solar panels", "honey bees", "glaciers"]


def comparison(chat, topic: str, params, user: str, asked: float | None = None) -> tuple[float, float, int]:
    """One Arena comparison (two rows); returns (seconds to first text, seconds until complete, tokens),
    counted from `asked`: when the annotator clicked, which for the baseline is when everyone did."""
    messages = [{"role": "user", "content": f"Explain {topic} in a short paragraph."}]
    started, first = asked or time.perf_counter(), None
    for texts in chat.stream([messages, messages], [None, None], params, user=user):
        if first is None and any(texts):
            first = time.perf_counter() - started
    tokens = sum(len(chat.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return first or 0.0, time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache/models"))
    parser.add_argument("--no-int8-decode", dest="int8_decode", action="store_false")
    parser.add_argument("--no-packed-decode", dest="packed_decode", action="store_false")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    chat = ChatModel.load(None, args.cache_dir, dtype=args.dtype)
    decode_weights.choose(chat, args.int8_decode, args.packed_decode)  # as app.py decides
    params = SamplingParams(temperature=0, max_new_tokens=args.tokens)
    topics = [TOPICS[i % len(TOPICS)] for i in range(args.users)]
    comparison(chat, "warm-up", SamplingParams(temperature=0, max_new_tokens=8), "warm")

    runs = []  # (sequential seconds, its comparisons, shared seconds, its comparisons), one per repeat
    for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits both alike
        runs.append((*one_after_another(chat, topics, params), *all_at_once(chat, topics, params)))
    print(f"{args.users} comparisons (2 rows each), {args.tokens} new tokens, {args.dtype}, greedy, "
          f"int8 decode {'on' if chat.int8_decode else 'off'}, packed decode {'on' if chat.packed_decode else 'off'}; "
          f"the run with the median speed-up of {args.repeats}")
    print(f"{'variant':<38}{'seconds':>8}{'tok/s':>9}{'1st text':>11}{'slowest':>11}{'speed-up':>10}")
    ratios = sorted(range(len(runs)), key=lambda k: runs[k][0] / runs[k][2])
    sequential_s, one_by_one, shared_s, shared = runs[ratios[len(ratios) // 2]]
    for name, seconds, comparisons in (("one after another (baseline)", sequential_s, one_by_one),
                                       ("all at once, shared decode loop", shared_s, shared)):
        tokens = sum(c[2] for c in comparisons)
        print(f"{name:<38}{seconds:>8.1f}{tokens / seconds:>9.1f}{statistics.median(c[0] for c in comparisons):>11.2f}"
              f"{max(c[1] for c in comparisons):>11.1f}{sequential_s / seconds:>9.2f}x")
    print("speed-up of each repeat: " + ", ".join(f"{run[0] / run[2]:.2f}x" for run in runs))
    print(f"widest batch {chat.scheduler.stats['widest']} rows; 1st text = median seconds until a comparison"
          " shows text; slowest = seconds until the last comparison is complete")


def one_after_another(chat, topics, params) -> tuple[float, list]:
    """How the app served before the shared loop: one generation event at a time."""
    started = time.perf_counter()
    done = [comparison(chat, topic, params, f"user{i}", asked=started) for i, topic in enumerate(topics)]
    return time.perf_counter() - started, done


def all_at_once(chat, topics, params) -> tuple[float, list]:
    """Every annotator asks at the same moment; the shared loop batches them."""
    results: list = [None] * len(topics)
    gate = threading.Barrier(len(topics))

    def user(i: int) -> None:
        gate.wait()
        results[i] = comparison(chat, topics[i], params, f"user{i}")

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(topics))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, results


if __name__ == "__main__":
    main()
