"""Eval decoding throughput: how `python -m evals run` generates base + candidate answers.

Every variant decodes the same prompts from the bundled eval set, both sides
(base and candidate rows in one batch, as evals/report.py does), greedy, with a
fixed token budget. The baseline is the first eval path: bf16 weights and the
streaming generator the chat UI uses. Ratios are against that baseline,
measured in the same run.

    python bench/bench_eval.py [--prompts 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.report import load_prompts  # noqa: E402
from models import decode_weights  # noqa: E402
from models.chat import ChatModel, SamplingParams  # noqa: E402


def decode_all(chat: ChatModel, prompts: list[str], params: SamplingParams, batch: int, streamed: bool) -> int:
    """Decode every prompt twice (two rows, like base + candidate); returns rows decoded."""
    order = sorted(prompts, key=len)  # as generate_pairs does, so padding stays small
    rows = 0
    for start in range(0, len(order), batch):
        conversations = [[{"role": "user", "content": p}] for p in order[start : start + batch]] * 2
        sides = [None] * len(conversations)
        if streamed:
            chat.scheduler.max_rows_per_user = len(conversations)  # one caller here, not a team's fair share
            *_, texts = chat.stream(conversations, sides, params)
        else:
            texts = chat.generate(conversations, sides, params)
        rows += len(texts)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16, help="prompts from the bundled eval set")
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per answer")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache/models"))
    args = parser.parse_args()
    rows = load_prompts()
    # a mix like the real set: half MT-bench (long prompts), half everyday (short)
    half = args.prompts // 2
    prompts = [r["prompt"] for r in rows[:half] + rows[-(args.prompts - half):]]
    params = SamplingParams(temperature=0, max_new_tokens=args.tokens)
    variants = [  # (label, dtype, prompts per batch, streamed)
        ("bf16, streamed, 8/batch (old)", "bf16", 8, True),
        ("bf16, generate, 8/batch", "bf16", 8, False),
        ("fp32, generate, 4/batch", "fp32", 4, False),
        ("fp32, generate, 8/batch (before)", "fp32", 8, False),
        ("fp32, generate, 16/batch", "fp32", 16, False),
        # last: once prepared, a model's packed copies stay on for this thread
        ("fp32, generate, 8/batch, packed", "fp32", 8, False),
        ("bf16, generate, 8/batch, packed (now)", "bf16", 8, False),
        ("bf16, generate, 16/batch, packed", "bf16", 16, False),
    ]
    models: dict[str, ChatModel] = {}
    packed: set[str] = set()  # the dtypes whose model this thread reads packed copies of
    results = []
    for label, dtype, batch, streamed in variants:
        chat = models.get(dtype) or models.setdefault(dtype, ChatModel.load(None, args.cache_dir, dtype=dtype))
        if "packed" in label and dtype not in packed:
            decode_weights.prepare(chat.model, int8=False, packed=True)
            packed.add(dtype)
        chat.generate([[{"role": "user", "content": "warm up"}]], [None], SamplingParams(temperature=0, max_new_tokens=4))
        start = time.perf_counter()
        decoded = decode_all(chat, prompts, params, batch, streamed)
        results.append((label, time.perf_counter() - start, decoded))
        print(f"  {label}: {results[-1][1]:.1f} s", file=sys.stderr, flush=True)
    baseline = results[0][1]
    print(f"{'variant':<40}{'seconds':>9}{'rows/min':>10}{'speed-up':>10}")
    for label, seconds, decoded in results:
        print(f"{label:<40}{seconds:>9.1f}{decoded / seconds * 60:>10.1f}{baseline / seconds:>9.2f}x")
    print(f"(baseline: bf16 streamed; {len(prompts)} prompts x 2 sides, {args.tokens} new tokens, greedy)")


if __name__ == "__main__":
    main()
