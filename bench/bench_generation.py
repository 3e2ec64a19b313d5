"""Side-by-side decoding: one batch over one base (how the app serves) vs two
separate generations (the naive way), on the embedded model. Prints ratios
against the naive baseline measured in the same run.

    python bench/bench_generation.py [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.chat import ChatModel, SamplingParams  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "Explain how a rainbow forms in three sentences."}],
    [{"role": "user", "content": "Give me three tips for writing clear emails."}],
]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache/models"))
    args = parser.parse_args()
    # greedy with a fixed budget, so every variant decodes comparable work
    params = SamplingParams(temperature=0, max_new_tokens=args.tokens)
    results = {}
    for dtype in ("fp32", "bf16"):
        chat = ChatModel.load(None, args.cache_dir, dtype=dtype)
        sequential = timed(lambda: [chat.generate([p], [None], params) for p in PROMPTS], args.repeats)
        batched = timed(lambda: chat.generate(PROMPTS, [None, None], params), args.repeats)
        results[dtype] = (sequential, batched)
    baseline = results["fp32"][0]
    print(f"{'variant':<34}{'seconds':>9}{'speed-up':>10}")
    for dtype, (sequential, batched) in results.items():
        print(f"{dtype + ' two answers, one at a time':<34}{sequential:>9.2f}{baseline / sequential:>9.2f}x")
        print(f"{dtype + ' two answers, one batch':<34}{batched:>9.2f}{baseline / batched:>9.2f}x")
    print(f"(baseline: fp32 one at a time; {args.tokens} new tokens per answer, median of {args.repeats})")


if __name__ == "__main__":
    main()
