"""What a side-by-side comparison costs in the shared decode loop: base + adapter rows in one batch,
with per-row adapter masks (models/lora_rows.py) and with peft's mixed-batch split, against the
baseline of one base row alone, measured in the same run on the embedded model. The adapter is a fresh random LoRA (r=8, all linear layers), as a first round makes.

    python bench/bench_side_by_side.py [--tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.chat import ChatModel, SamplingParams  # noqa: E402

QUESTION = [{"role": "user", "content": "Explain how a rainbow forms in a short paragraph."}]


def random_adapter(chat: ChatModel, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(chat.model.config)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                  init_lora_weights=False))  # non-zero B: a real delta
    with torch.no_grad():  # small, so answers keep the base's length and the steps compare like for like
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.01)
    peft_model.save_pretrained(out)
    return out


def timed(chat, adapters, params, repeats: int) -> float:
    """Median milliseconds per decode step: a step advances every row by one token, and rows may end
    at different lengths, so the time is divided by the longest row's tokens."""
    samples = []
    for _ in range(repeats + 1):  # the first is a warm-up
        started = time.perf_counter()
        *_, texts = chat.stream([QUESTION] * len(adapters), adapters, params)
        steps = max(len(chat.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        samples.append((time.perf_counter() - started) * 1000 / max(steps, 1))
    return statistics.median(samples[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache/models"))
    args = parser.parse_args()
    chat = ChatModel.load(None, args.cache_dir, dtype="bf16")
    params = SamplingParams(temperature=0, max_new_tokens=args.tokens)
    alone = timed(chat, [None], params, args.repeats)  # before any adapter exists: the plain model
    pair_plain = timed(chat, [None, None], params, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        chat.ensure_adapter("r1", random_adapter(chat, Path(tmp) / "adapter"))
    base_with_adapter_loaded = timed(chat, [None], params, args.repeats)
    adapter_alone = timed(chat, ["r1"], params, args.repeats)
    mixed = timed(chat, [None, "r1"], params, args.repeats)
    chat.scheduler.row_masks = False  # the same rows through peft's mixed-batch split
    peft_base = timed(chat, [None], params, args.repeats)
    peft_adapter = timed(chat, ["r1"], params, args.repeats)
    peft_mixed = timed(chat, [None, "r1"], params, args.repeats)
    print(f"embedded model, bf16, {args.tokens} new tokens a row, median of {args.repeats}")
    print(f"{'variant':<46}{'ms/step':>9}{'x one row':>11}")
    for name, seconds in [("one base row, no adapter loaded (baseline)", alone),
                          ("two base rows, no adapter loaded", pair_plain),
                          ("one base row, an adapter loaded", base_with_adapter_loaded),
                          ("one adapter row", adapter_alone),
                          ("base row + adapter row (side by side)", mixed),
                          ("peft mixed batch: one base row", peft_base),
                          ("peft mixed batch: one adapter row", peft_adapter),
                          ("peft mixed batch: base + adapter", peft_mixed)]:
        print(f"{name:<46}{seconds:>9.2f}{seconds / alone:>10.2f}x")
    print(f"side by side costs {mixed / (base_with_adapter_loaded + adapter_alone):.2f}x of serving the two rows "
          f"one after the other, and {mixed / peft_mixed:.2f}x of peft's mixed batch")


if __name__ == "__main__":
    main()
