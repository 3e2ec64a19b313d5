"""Where one stream's decode step goes: a torch profile of the app's path (one row, KV cache, greedy).

The issue's yardstick is llama.cpp on the same GGUF (89-147 tok/s on 2 cores, measured earlier; it
builds from source for ~15 minutes, so it is not run here). This prints, for the embedded model in
bf16 and fp32:
- ms per decode step and tokens per second;
- the share of the step in matrix multiplies (the weights), attention, norms and element-wise ops,
  and what is left: Python and dispatch overhead between the ops;
- the bytes of weights one step must read, against the Q4_1 GGUF llama.cpp reads.

    python bench/profile_decode.py [--steps 48]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GROUPS = {  # profiler op name -> group
    "aten::mm": "matmul", "aten::addmm": "matmul", "aten::bmm": "matmul", "aten::linear": None, "aten::matmul": None,
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::scaled_dot_product_attention": None, "aten::_scaled_dot_product_attention_math": "attention",
    "aten::pow": "norm", "aten::mean": "norm", "aten::rsqrt": "norm",
    "aten::cat": "cache", "aten::index_select": "embedding", "aten::embedding": None,
}


def profile(dtype: str, steps: int, cache_dir: Path):
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile
    from transformers import DynamicCache

    from models.chat import ChatModel

    chat = ChatModel.load(None, cache_dir, dtype=dtype)
    model, tokenizer = chat.model, chat.tokenizer
    ids = torch.tensor([chat.prompt_ids([{"role": "user", "content": "Tell me about the sea."}])])

    def decode(n: int) -> float:
        cache = DynamicCache()
        with torch.inference_mode():
            logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            started = time.perf_counter()
            for _ in range(n):
                logits = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1).logits
                token = logits[:, -1].argmax(-1, keepdim=True)
        return (time.perf_counter() - started) / n

    decode(4)  # warm up
    per_step = decode(steps)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled = decode(steps)
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        group = GROUPS.get(event.key, "other ops" if event.key.startswith("aten::") else None)
        if group:
            groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total / 1000  # ms
    total_ms = profiled * steps * 1000
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return per_step, groups, total_ms, weight_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache/models"))
    args = parser.parse_args()
    import torch

    from models.loading import embedded_gguf_path

    gguf = embedded_gguf_path()
    print(f"torch threads: {torch.get_num_threads()}")
    baseline = None
    for dtype in ("bf16", "fp32"):
        per_step, groups, total_ms, weight_bytes = profile(dtype, args.steps, args.cache_dir)
        baseline = baseline or per_step
        print(f"\n{dtype}: {per_step * 1000:.1f} ms/step, {1 / per_step:.1f} tok/s "
              f"({baseline / per_step:.2f}x bf16); weights read per step {weight_bytes / 2**20:.0f} MB")
        accounted = sum(groups.values())
        for group, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"  {group:12s} {ms / args.steps:6.2f} ms/step  {ms / total_ms:6.1%}")
        print(f"  {'between ops':12s} {(total_ms - accounted) / args.steps:6.2f} ms/step  "
              f"{(total_ms - accounted) / total_ms:6.1%}  (Python, module calls, dispatch)")
    if gguf.is_file():
        print(f"\nllama.cpp reads the Q4_1 GGUF: {gguf.stat().st_size / 2**20:.0f} MB of weights per step")


if __name__ == "__main__":
    main()
