"""The over-training window: quality against training steps on a narrow, homogeneous set.

One LoRA round trains on 8 rows of a single templated task (bench/finetune_task.py: write an
ISO date in words, references computed), all dates of one year, far past its best, keeping the adapter of every
few steps (`--save-every`). Each kept adapter then answers, greedily:
- held-out prompts of the same task, dates of any year: ROUGE-L against the computed references
  (has it learned the task, or the training rows?);
- the bundled general eval prompts: the share of canned replies and of looping answers, as the
  promotion gate counts them (does it still answer anything else?).
The plot puts these and the round's held-out loss against the step, with the step the round kept
(its best held-out loss) marked. Step 0 is the base.

    python bench/bench_window.py [--steps 120] [--every 10] [--plot docs/overtraining_window.png]

Run it on a quiet machine: two torch processes on 2 cores slow each other 5-10x.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_finetune_methods import run  # noqa: E402
from bench.finetune_task import date_row, one_year_date_row, write_task  # noqa: E402


def answers_per_step(round_dir: Path, prompts: list[str], cache_dir: Path, tokens: int, base_model: str | None):
    """{step: greedy answers to `prompts`}, step 0 being the base, every saved adapter after it."""
    from models.chat import ChatModel, SamplingParams

    chat = ChatModel.load(base_model, cache_dir, dtype="fp32")  # fp32 batches fastest on CPU (bench_eval.py)
    params = SamplingParams(temperature=0, max_new_tokens=tokens)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    steps = sorted(int(d.name.split("-")[1]) for d in (round_dir / "steps").glob("step-*"))
    out = {0: chat.generate(conversations, [None] * len(prompts), params)}
    for step in steps:
        name = f"step-{step}"
        chat.ensure_adapter(name, round_dir / "steps" / name)
        started = time.perf_counter()
        out[step] = chat.generate(conversations, [name] * len(prompts), params)
        print(f"  step {step}: answered {len(prompts)} prompts in {time.perf_counter() - started:.1f} s", flush=True)
    return out


def measure(answers: dict, task: list[dict], general: list[str]) -> dict:
    """Per step: task ROUGE-L, and the canned and looping shares on the general prompts (the gate's checks)."""
    from evals.comparisons import canned_reply, repetition, rouge_l

    task_prompts, references = [r["prompt"] for r in task], [r["reference"] for r in task]
    n = len(task_prompts)
    base_general = answers[0][n:]
    figures = {}
    for step, texts in answers.items():
        task_texts, general_texts = texts[:n], texts[n:]
        figures[step] = {
            "rouge_l": rouge_l(task_prompts, task_texts, task_texts, references).candidate,
            "canned_share": canned_reply(general, base_general, general_texts).candidate,
            "loop_share": repetition(general, base_general, general_texts).candidate,
            "example_task": task_texts[0], "example_general": general_texts[0],
        }
    return figures


def plot(figures: dict, losses: dict, kept: int | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(figures)
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=120)
    ax.plot(steps, [figures[s]["rouge_l"] for s in steps], "o-", label="task ROUGE-L (held-out prompts)")
    ax.plot(steps, [figures[s]["canned_share"] for s in steps], "s-", label="canned replies (general prompts)")
    ax.plot(steps, [figures[s]["loop_share"] for s in steps], "^-", label="looping answers (general prompts)")
    ax.set_xlabel("training step (0 = base)")
    ax.set_ylabel("score / share")
    ax.set_ylim(0, 1.02)
    if losses:
        loss_ax = ax.twinx()
        loss_ax.plot(sorted(losses), [losses[s] for s in sorted(losses)], ":", color="grey", label="held-out loss")
        loss_ax.set_ylabel("held-out loss")
        loss_ax.legend(loc="upper center", bbox_to_anchor=(0.82, -0.12), fontsize=8, frameon=False)
    if kept:
        ax.axvline(kept, color="green", linestyle="--", label=f"kept: step {kept} (best held-out loss)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.35, -0.12), ncol=2, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=10, help="keep the adapter every N steps")
    parser.add_argument("--train-rows", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--heldout", type=int, default=16, help="held-out prompts of the task")
    parser.add_argument("--general", type=int, default=16, help="prompts from the bundled general eval set")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--base-model", help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "overtraining_window.png")
    parser.add_argument("--work", type=Path, help="default: a temp dir")
    args = parser.parse_args()
    from evals.report import load_prompts

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-window-"))
    # trained on dates of one year, asked about dates of any year: narrow data, a wider question
    files = write_task(work / "task", args.train_rows, args.heldout, families=(one_year_date_row,),
                       heldout_families=(date_row,))
    task = [json.loads(line) for line in files["references"].read_text().splitlines()]
    general = [r["prompt"] for r in load_prompts()[: args.general]]
    cache = work / "cache" / "models"
    print(f"training: {args.train_rows} rows of one task, {args.steps} steps at lr {args.lr}, "
          f"keeping every {args.every}; work dir {work}", flush=True)
    run("training", "run", "--method", "sft", "--data", files["train"], "--out", work / "checkpoints",
        "--round-id", "window", "--cache-dir", cache, "--recipe", "sft_qlora", "--no-4bit", "--lr", args.lr,
        "--steps", args.steps, "--epochs", 1000, "--save-every", args.every, "--eval-every", args.every,
        "--early-stopping-patience", 0, "--min-pairs", 2, *(["--base-model", args.base_model] if args.base_model else []))
    round_dir = work / "checkpoints" / "window"
    info = json.loads((round_dir / "round.json").read_text())
    answers = answers_per_step(round_dir, [r["prompt"] for r in task] + general, cache, args.tokens, args.base_model)
    figures = measure(answers, task, general)
    losses = {e["step"]: e["eval_loss"] for e in info["metrics"]["evals"]}
    kept = info["metrics"]["best_step"]
    print("\n| step | task ROUGE-L | canned (general) | looping (general) | held-out loss |")
    print("|---|---|---|---|---|")
    for step, f in sorted(figures.items()):
        mark = " (kept)" if step == kept else ""
        loss = f"{losses[step]:.3f}" if step in losses else ""
        print(f"| {step}{mark} | {f['rouge_l']:.3f} | {f['canned_share']:.2f} | {f['loop_share']:.2f} | {loss} |")
    best = max(figures, key=lambda s: figures[s]["rouge_l"] - figures[s]["canned_share"])
    print(f"\nbest by task ROUGE-L minus canned share: step {best}; the round kept step {kept}")
    for step in (0, best, max(figures)):
        print(f"  step {step}: task {figures[step]['example_task']!r} | general {figures[step]['example_general']!r}")
    plot(figures, losses, kept, args.plot,
         f"Over-training window: {args.train_rows} rows of one task, LoRA r={info['lora']['r']}, lr {args.lr}")
    (work / "window.json").write_text(json.dumps({"figures": figures, "losses": losses, "kept": kept}, indent=2))
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
