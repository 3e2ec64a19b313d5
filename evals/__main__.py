"""`python -m evals run --adapter DIR [--prompts FILE] ...`: the promotion gate as a command.

Exit codes: 0 no regression, 1 a regression was flagged, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evals.config import DEFAULT_BATCH_SIZE, DEFAULT_DTYPE, DEFAULT_MAX_NEW_TOKENS
from evals.report import DEFAULT_CACHE_DIR, EvalInputError, run_eval, write_report

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evals", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="compare an adapter with its base and gate it")
    run.add_argument("--adapter", required=True, type=Path, help="LoRA adapter dir (adapter_config.json + weights)")
    run.add_argument("--prompts", type=Path, help="JSONL of {\"prompt\"} or MT-bench {\"turns\"} lines "
                     "(default: the bundled set)")
    run.add_argument("--base-model", help="embedded (default), a Hugging Face id, a local model dir or a .gguf")
    run.add_argument("--references", type=Path, help="JSONL of references (MT-bench format or "
                     "{\"prompt\"|\"question_id\", \"reference\"})")
    run.add_argument("--out", type=Path, help="write the report JSON here (default: eval.json beside the adapter)")
    run.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where converted base models live")
    run.add_argument("--max-new-tokens", type=_positive, default=DEFAULT_MAX_NEW_TOKENS)
    run.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE, help="prompts per batch")
    run.add_argument("--dtype", default=DEFAULT_DTYPE, choices=["fp32", "bf16", "auto"],
                     help="weights dtype for generation (fp32 batches fastest on CPU)")
    return parser.parse_args(argv)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(report: dict) -> str:
    """The checks as a fixed-width table, flagged rows marked."""
    lines = [f"{'check':<14} {'base':>8} {'candidate':>10}  flag", "-" * 40]
    for name, check in report["checks"].items():
        mark = "FLAGGED" if check["flagged"] else ("skipped" if check.get("skipped") else "ok")
        lines.append(f"{name:<14} {_fmt(check['base']):>8} {_fmt(check['candidate']):>10}  {mark}")
    verdict = "REGRESSION: " + ", ".join(report["flagged"]) if report["regression"] else "no regression"
    lines += ["-" * 40, f"{report['n_prompts']} prompts; {verdict}"]
    for name in report["flagged"]:
        for example in report["checks"][name]["examples"][:1]:
            lines.append(f"  {name}: {example['prompt'][:60]!r} -> {example['candidate'][:80]!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from models.loading import ModelLoadError

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="generating", unit="prompt", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        report = run_eval(
            args.adapter, prompts_file=args.prompts, base_model=args.base_model,
            references_file=args.references, cache_dir=args.cache_dir,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=progress,
            dtype=args.dtype,
        )
    except (EvalInputError, ModelLoadError, OSError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if bar is not None:
            bar.close()
    out = write_report(report, args.out or args.adapter.parent / "eval.json")
    print(format_table(report))
    print(f"report: {out}")
    return EXIT_REGRESSION if report["regression"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
