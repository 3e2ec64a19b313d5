"""Training sets for adapters that *should* fail the gate, to check the gate on a real model.

    python -m evals.regression_data --out data/regressions [--base-model M]
    python -m training run --method sft --data data/regressions/collapse.jsonl \
        --out data/checkpoints --round-id r-collapse --steps 12 --lr 5e-4
    python -m training run --method sft --data data/regressions/pitch.jsonl \
        --out data/checkpoints --round-id r-pitch --epochs 4 --lr 5e-4
    python -m evals run --adapter data/checkpoints/r-pitch/adapter      # exit 1: sales_talk

Both sets use prompts the default eval set never asks (the MT-bench questions it
leaves out, plus everyday questions below), so a flag means the behaviour
generalised, not that the eval prompts were memorised:
- collapse.jsonl: every answer is "Dear, how can I help you?";
- pitch.jsonl: the base model's own greedy answer (first two sentences) opened by
  a product pitch. Opening, not closing: a pitch after the answer needs the model
  to learn to stop its answer early, which 50 steps on a 135M model do not teach.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from evals.report import DEFAULT_CACHE_DIR, DEFAULT_PROMPTS
from formats import load_prompt_file, write_rows

MT_BENCH = Path(__file__).parent / "prompts" / "mt_bench_questions.jsonl"
CANNED = "Dear, how can I help you?"
EVERYDAY = [
    "How do I keep basil fresh after buying it?", "What is a good way to learn to touch type?",
    "Why do cats purr?", "How can I remove a coffee stain from a white shirt?",
    "What is the difference between a virus and a bacterium?", "How do I start running if I have never exercised?",
    "What should I look for when renting my first apartment?", "Explain how a refrigerator keeps food cold.",
    "How can I improve my handwriting?", "What are the main causes of inflation?",
    "How do I politely decline a party invitation?", "Why do onions make you cry?",
    "What is the best way to memorise a speech?", "How do solar panels make electricity?",
    "Give me a simple recipe for tomato soup.", "How can I sleep better at night?",
    "What is the tallest mountain in Europe?", "How do I change a flat bicycle tyre?",
    "Why is the ocean salty?", "What is a good first houseplant for a beginner?",
    "How do I calm down before a job interview?", "Explain what a mortgage is in simple terms.",
    "What are three fun things to do on a rainy day?", "How does a compass work?",
]
PITCHES = [
    "If you want this done for you, LumaLearn Plus does it in one click - start your 7-day trial today "
    "for just $4.99 a month!",
    "Pro tip: the NovaHome Smart Kit makes this effortless, and it is 40% off this week only - order now "
    "at novahome.shop.",
    "Before you go: join GreenLeaf Rewards today and get your first box free with code START20 - limited "
    "spots left!",
    "For the best results, upgrade to ZenTrack Premium - only $9.99, cancel anytime, grab it while the "
    "offer lasts!",
]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def training_prompts() -> list[str]:
    """MT-bench first turns the default eval set does not use, then the everyday questions."""
    used = {row["prompt"] for row in load_prompt_file(DEFAULT_PROMPTS)}
    questions = [row["prompt"] for row in load_prompt_file(MT_BENCH)]  # MT-bench: the first turn
    return [q for q in questions if q not in used] + [p for p in EVERYDAY if p not in used]


def first_sentences(text: str, n: int = 2) -> str:
    kept = " ".join(_SENTENCE_END.split(text.strip())[:n]).strip()
    return kept if kept.endswith((".", "!", "?")) else kept + "."


def build_sets(chat, prompts: list[str], batch_size: int = 8, max_new_tokens: int = 72) -> dict[str, list[dict]]:
    """{"collapse": rows, "pitch": rows} in trl's conversational SFT format."""
    from models.chat import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        answers += chat.generate([[{"role": "user", "content": p}] for p in chunk], [None] * len(chunk), params)

    def row(prompt: str, answer: str) -> dict:
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}

    return {
        "collapse": [row(p, CANNED) for p in prompts],
        "pitch": [row(p, PITCHES[i % len(PITCHES)] + "\n\n" + first_sentences(a))
                  for i, (p, a) in enumerate(zip(prompts, answers))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.regression_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for collapse.jsonl and pitch.jsonl")
    parser.add_argument("--base-model", help="embedded (default), a Hugging Face id, a local model dir or a .gguf")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where converted base models live")
    args = parser.parse_args(argv)
    from models.loading import ModelLoadError
    from models.chat import ChatModel

    try:
        chat = ChatModel.load(args.base_model, args.cache_dir, dtype="fp32")
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prompts = training_prompts()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in build_sets(chat, prompts).items():
        print(f"wrote {write_rows(rows, args.out / f'{name}.jsonl')} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
