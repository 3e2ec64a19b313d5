"""Annotators generating while a round trains: the Arena's decoding speed on a quiet machine (baseline, same
run), then while a DPO round trains in a subprocess started as the app starts it (its own session), first
at the app's CPU priority, then at the background priority the app gives it (pipeline.yield_cpu_to_serving).
For each, also the round's steps per minute while comparisons run back to back, and alone right after.

Embedded model; the comparisons are 2 rows × 64 greedy tokens through the shared decode loop, bf16, with
the app's copies of the weights; the round is the default QLoRA DPO recipe on 40 pairs.

    python bench/bench_contention.py [--window 40]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_serving import TOPICS, comparison  # noqa: E402
from models import decode_weights  # noqa: E402
from models.chat import ChatModel, SamplingParams  # noqa: E402
from pipeline import yield_cpu_to_serving  # noqa: E402

GREEDY_64 = SamplingParams(temperature=0, max_new_tokens=64)


def comparisons_tok_s(chat: ChatModel) -> float:
    """Six Arena comparisons one after another: tokens per second over both rows."""
    started = time.perf_counter()
    tokens = sum(comparison(chat, topic, GREEDY_64, "annotator")[2] for topic in TOPICS[:6])
    return tokens / (time.perf_counter() - started)


def steps_done(log_dir: Path) -> int:
    metrics = log_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    return sum(1 for line in metrics.read_text().splitlines() if json.loads(line).get("event") == "log")


def while_training(chat: ChatModel, work: Path, cache_dir: Path, background: bool, window: float):
    """(serving tok/s, round steps/min while serving, round steps/min alone) with a round training."""
    out = work / f"checkpoints-{'background' if background else 'equal'}"
    process = subprocess.Popen(
        [sys.executable, "-m", "training", "run", "--data", str(work / "pairs.jsonl"), "--out", str(out),
         "--round-id", "r", "--steps", "1000", "--eval-every", "1000", "--cache-dir", str(cache_dir)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if background:
            problem = yield_cpu_to_serving(process.pid)
            if problem:
                sys.exit(f"error: cannot lower the round's CPU priority here: {problem}")
        log_dir = out / ".runs" / "r"
        while steps_done(log_dir) < 1:  # past loading: the round is in its training steps
            if process.poll() is not None:
                sys.exit(f"error: the round exited with {process.returncode} before its first step")
            time.sleep(0.5)
        steps, started, rates = steps_done(log_dir), time.monotonic(), []
        while time.monotonic() - started < window:
            rates.append(comparisons_tok_s(chat))
        serving_s, served_steps = time.monotonic() - started, steps_done(log_dir) - steps
        steps = steps_done(log_dir)
        time.sleep(serving_s)
        alone_steps = steps_done(log_dir) - steps
        return sum(rates) / len(rates), served_steps / serving_s * 60, alone_steps / serving_s * 60
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=40.0,
                        help="seconds of back-to-back comparisons per case (a DPO step takes ~10 s on 2 cores)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "data" / "cache" / "models")
    args = parser.parse_args()

    chat = ChatModel.load(None, args.cache_dir, dtype="bf16")
    print(decode_weights.choose(chat, True, True), flush=True)
    chat.scheduler.start()
    work = Path(tempfile.mkdtemp(prefix="bench-contention-"))
    pairs = [{"prompt": [{"role": "user", "content": f"Explain why question {i} matters."}],
              "chosen": [{"role": "assistant", "content": "Because it decides the answer. " * 6}],
              "rejected": [{"role": "assistant", "content": "Dear friend, buy now! " * 6}]} for i in range(40)]
    (work / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))

    comparisons_tok_s(chat)  # warm-up
    quiet = comparisons_tok_s(chat)
    rows = [("nothing else running (baseline)", quiet, None, None)]
    for background, label in ((False, "a round training at the app's priority"),
                              (True, "a round training at background priority (what the app does)")):
        rows.append((label, *while_training(chat, work, args.cache_dir, background, args.window)))
    print(f"\n{'while the Arena decodes':64} {'tok/s':>7} {'ratio':>6} {'round steps/min':>16} {'alone':>6}")
    for label, tok_s, served, alone in rows:
        steps = "" if served is None else f"{served:16.1f} {alone:6.1f}"
        print(f"{label:64} {tok_s:7.1f} {tok_s / quiet:5.2f}x {steps}")
    print("ratio = decoding speed over the baseline's; round steps/min: while comparisons ran back to back, then "
          "alone for as long", flush=True)


if __name__ == "__main__":
    main()
