"""The CUDA paths, checked on a GPU machine with no hub: a randomly initialised model of
Llama-2-7B's shape (built from its config), 4-bit NF4 + LoRA r=8 training steps as the
dpo_qlora_7b recipe runs them, then serving a base row and an adapter row through the shared
decode loop on the GPU. Prints peak VRAM and seconds per step beside the reference figures
(QLoRA r=8 on a 7B model: about 12 GB, 40 minutes for 200 steps on one 24 GB card).

    python bench/gpu_check.py [--steps 5] [--layers 32]

Exits 2 with one line when torch sees no CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                 vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=32, help="32 is the real 7B; fewer for a quicker look")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("error: torch sees no CUDA GPU here; run this on a GPU machine", file=sys.stderr)
        return 2
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    from models.chat import ChatModel, SamplingParams
    from models.loading import keep_4bit_trainable
    from tests.conftest import build_tiny_model_dir

    config = LlamaConfig(num_hidden_layers=args.layers, **LLAMA2_7B)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(f"{tmp}/m", max_shard_size="2GB")
        print(f"built a random {args.layers}-layer Llama-2-7B-shaped model in {time.perf_counter() - started:.0f} s")
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        torch.cuda.reset_peak_memory_stats()
        model = LlamaForCausalLM.from_pretrained(f"{tmp}/m", quantization_config=quant, device_map={"": "cuda"},
                                                 dtype=torch.bfloat16)
        keep_4bit_trainable(model)
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device="cuda")
        times = []
        for step in range(args.steps):
            torch.cuda.synchronize()
            started = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            print(f"step {step + 1}: loss {loss.item():.3f}, {times[-1]:.2f} s")
        peak = torch.cuda.max_memory_allocated() / 2**30
        per_step = sorted(times[1:] or times)[len(times[1:] or times) // 2]
        # the recipe's optimizer step is 8 accumulated micro-batches of this size
        print(f"QLoRA r=8, batch {args.batch} x {args.seq} tokens: peak VRAM {peak:.1f} GiB (reference ~12 GB), "
              f"{per_step:.2f} s per micro-batch -> {per_step * 8 * 200 / 60:.0f} min for 200 recipe steps "
              "(reference ~40 min)")
        del model, optimizer
        torch.cuda.empty_cache()

        tiny = build_tiny_model_dir(Path(tmp) / "tiny")  # serving: the shared loop on the GPU
        chat = ChatModel.load(str(tiny), Path(tmp) / "cache", dtype="bf16", device="cuda")
        question = [{"role": "user", "content": "hello"}]
        texts = list(chat.stream([question, question], [None, None], SamplingParams(temperature=0, max_new_tokens=32)))[-1]
        print(f"serving on {chat.model.device}: {len(texts)} rows decoded, widest batch {chat.scheduler.stats['widest']}")
        chat.scheduler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
