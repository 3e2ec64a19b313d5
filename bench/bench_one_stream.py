"""One stream against llama.cpp, in one run: how far the app's decode loop is from a C++ engine.

The same prompt, greedy, the same number of new tokens (end-of-sequence banned in every variant,
so each decodes the same amount), the same thread count:
- llama.cpp (llama-cpp-python) on the embedded model's own Q4_1 GGUF: the baseline;
- the app's path, `ChatModel.stream` through the shared decode loop, bf16 and fp32, on the base
  and on a row that uses a LoRA adapter (r=8 on every linear layer, as a round writes);
- the app's default on a bf16 model: the loop's narrow steps read int8 copies of the weights
  (models/decode_weights.py; `app.py --no-int8-decode` is the bf16 row);
- plain `model.generate` on the same weights, to separate the loop's own cost from the model's.

Each figure is tokens per second, the median of --repeats runs, and its ratio to llama.cpp.
llama-cpp-python is a bench-only install (it compiles llama.cpp, about 5 minutes on 2 cores):

    pip install llama-cpp-python==0.3.36
    python bench/bench_one_stream.py [--tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]


def median_rate(run, tokens: int, repeats: int) -> float:
    """Tokens per second: `run()` decodes `tokens` new tokens; warmed up once, median of `repeats`."""
    run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return tokens / statistics.median(samples)


def llama_cpp_rate(prompt_ids: list[int], tokens: int, repeats: int, threads: int) -> float | str:
    try:
        from llama_cpp import Llama
    except ImportError:
        return "not installed (pip install llama-cpp-python==0.3.36; it compiles for about 5 minutes)"
    from models.loading import embedded_gguf_path

    llm = Llama(str(embedded_gguf_path()), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False)
    eos = llm.token_eos()

    def run():
        llm.reset()  # no prompt cache between runs: each one prefills, as the app does
        out = llm.create_completion(prompt_ids, max_tokens=tokens, temperature=0.0, logit_bias={eos: -1e9})
        assert out["usage"]["completion_tokens"] == tokens, out["usage"]

    return median_rate(run, tokens, repeats)


def random_adapter(model_dir: str, out: Path) -> Path:
    """A LoRA adapter with non-zero weights on every linear layer (r=8), as a training round writes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(out)
    return out


def no_eos(chat):
    """Ban end-of-sequence in the model's own logits, so every variant decodes exactly --tokens tokens."""
    import torch

    banned = sorted({chat.tokenizer.eos_token_id, chat.tokenizer.pad_token_id} - {None})

    def hook(_module, _inputs, output):
        output.logits[..., banned] = torch.finfo(output.logits.dtype).min
        return output

    return chat.model.register_forward_hook(hook)


def stream(chat, adapter_name, params) -> str:
    *_, texts = chat.stream([MESSAGES], [adapter_name], params)
    return texts[0]


def stream_pair(chat, params) -> list[str]:
    *_, texts = chat.stream([MESSAGES, MESSAGES], [None, "lora"], params)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache/models"))
    args = parser.parse_args()
    import torch

    from models import decode_weights
    from models.chat import ChatModel, SamplingParams
    from models.loading import resolve_base_model
    from models.own_thread import on_own_thread

    threads = torch.get_num_threads()
    params = SamplingParams(temperature=0, max_new_tokens=args.tokens)
    rows: list[tuple[str, float | str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = resolve_base_model(None, args.cache_dir)
        adapter = on_own_thread(lambda: random_adapter(model_dir, Path(tmp) / "adapter"))
        prompt_ids = None
        for dtype in ("bf16", "fp32"):
            chat = ChatModel.load(None, args.cache_dir, dtype=dtype)
            prompt_ids = chat.prompt_ids(MESSAGES)
            plain = torch.tensor([prompt_ids])
            hook = no_eos(chat)
            # on a thread of its own, as the app does with torch work off the loop (models/own_thread.py)
            rows.append((f"model.generate, {dtype}, base", on_own_thread(lambda: median_rate(
                lambda: chat.model.generate(input_ids=plain, attention_mask=torch.ones_like(plain),
                                            max_new_tokens=args.tokens, do_sample=False),
                args.tokens, args.repeats))))
            hook.remove()
            chat.ensure_adapter("lora", adapter)
            hook = no_eos(chat)
            chat.packed_decode = decode_weights.packing_unsupported(chat.model) is None  # the app's default
            for int8 in (False, True) if dtype == "bf16" else (False,):
                chat.int8_decode = int8  # read by the decode loop when it starts
                label = f"app loop, {dtype}{', int8 decode' if int8 else ''}"
                for name, adapter_name in (("base", None), ("LoRA row", "lora")):
                    rows.append((f"{label}, {name}", median_rate(lambda: stream(chat, adapter_name, params),
                                                                 args.tokens, args.repeats)))
                pair = median_rate(lambda: stream_pair(chat, params), args.tokens, args.repeats)
                rows.append((f"{label}, base + LoRA side by side (both rows)", 2 * pair))
                chat.scheduler.close()
                chat._scheduler = None  # the next variant starts its own loop
            hook.remove()
            del chat
        baseline = llama_cpp_rate(prompt_ids, args.tokens, args.repeats, threads)
    print(f"one stream, greedy, {args.tokens} new tokens, {threads} threads, median of {args.repeats}; "
          "side by side counts both rows' tokens")
    if isinstance(baseline, str):
        print(f"{'llama.cpp (Q4_1 GGUF)':<34}{baseline}")
        baseline = None
    else:
        print(f"{'llama.cpp (Q4_1 GGUF), baseline':<34}{baseline:>8.1f} tok/s")
    for label, rate in rows:
        ratio = f"{rate / baseline:>8.2f}x" if baseline else ""
        print(f"{label:<34}{rate:>8.1f} tok/s{ratio}")


if __name__ == "__main__":
    main()
