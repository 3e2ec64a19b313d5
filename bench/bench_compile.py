"""A static KV cache and torch.compile against the eager decode step, in one run, one stream.

The issue asked to measure a static cache with `torch.compile` once the adapters are attached. This
decodes the embedded model greedily, one row, with transformers' StaticCache:
- eager (baseline);
- `torch.compile(model.forward)`, inductor's defaults;
- the same with inductor's `freezing` (weights folded as constants; oneDNN prepacks them on the CPU);
- eager with int8 weights on these narrow steps (models/decode_weights.py, what the app serves with).
It prints tok/s, the ratio to eager, and the seconds the first compiled run took. What it found on
2 cores (the README has the run): freezing helps about 1.4x but costs ~27 s of compiling per batch
shape, and the app's loop changes shape (rows join and leave) every few steps; int8 weights help
about 1.5x with no compiling, so the app took those.

    python bench/bench_compile.py [--tokens 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]


def decode_rate(model, prompt_ids: list[int], tokens: int, step, cache=None) -> float:
    """Tokens per second of `tokens` greedy steps after the prefill, through `step(**kwargs) -> logits`.
    A compiled step gets the same `cache` object every run (emptied first): inductor's freezing
    folds what the first call saw into its graph, so a new cache object would break it."""
    import torch
    from transformers import StaticCache

    if cache is None:
        cache = StaticCache(config=model.config, max_cache_len=len(prompt_ids) + tokens + 8)
    cache.reset()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        positions = torch.arange(ids.shape[1])
        logits = model(input_ids=ids, position_ids=positions.unsqueeze(0), cache=cache, use_cache=True,
                       cache_position=positions, logits_to_keep=1).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        started = time.perf_counter()
        for i in range(tokens):
            position = torch.tensor([ids.shape[1] + i])
            logits = step(input_ids=token, position_ids=position.unsqueeze(0), cache=cache,
                          use_cache=True, cache_position=position)
            token = logits[:, -1].argmax(-1, keepdim=True)
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache/models"))
    args = parser.parse_args()
    import torch
    import torch._inductor.config as inductor
    from transformers import StaticCache

    from models import decode_weights
    from models.chat import ChatModel

    chat = ChatModel.load(None, args.cache_dir, dtype="bf16")
    model, prompt_ids = chat.model, chat.prompt_ids(MESSAGES)

    def eager(**kwargs):
        return model(**kwargs).logits

    decode_rate(model, prompt_ids, 8, eager)  # warm-up
    rows = [("eager, static cache (baseline)", decode_rate(model, prompt_ids, args.tokens, eager), None)]
    for label, freezing in (("torch.compile, inductor defaults", False), ("torch.compile, freezing", True)):
        inductor.freezing = freezing
        torch._dynamo.reset()
        compiled = torch.compile(model.forward, dynamic=False)
        started = time.perf_counter()
        # the warm-up decodes as many tokens as the timed run: the static cache's length is part of
        # the compiled graph's shape, so a shorter warm-up would leave a recompile inside the timing
        cache = StaticCache(config=model.config, max_cache_len=len(prompt_ids) + args.tokens + 8)
        decode_rate(model, prompt_ids, args.tokens, lambda **kw: compiled(**kw).logits, cache)
        compile_s = time.perf_counter() - started
        rows.append((label, decode_rate(model, prompt_ids, args.tokens, lambda **kw: compiled(**kw).logits, cache),
                     compile_s))
    torch._dynamo.reset()
    inductor.freezing = False
    decode_weights.prepare(model, int8=True, packed=False)  # this thread now reads int8 weights on narrow steps
    decode_rate(model, prompt_ids, 8, eager)
    rows.append(("eager, int8 weights on narrow steps", decode_rate(model, prompt_ids, args.tokens, eager), None))
    baseline = rows[0][1]
    print(f"one stream, bf16, greedy, {args.tokens} new tokens, {torch.get_num_threads()} threads")
    for label, rate, compile_s in rows:
        extra = f"   first run {compile_s:.0f} s (compiling)" if compile_s else ""
        print(f"{label:<40}{rate:>7.1f} tok/s{rate / baseline:>7.2f}x{extra}")


if __name__ == "__main__":
    main()
